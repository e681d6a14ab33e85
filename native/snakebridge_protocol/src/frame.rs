//! Length-prefixed framing.

use std::io::{self, Read};

use crate::{DecodeError, EncodeError};

/// Bytes in a frame header: the body length, big-endian `u32`.
pub const HEADER_LEN: usize = 4;

/// Largest frame body either side accepts (64 MiB). Enforced when encoding,
/// so an oversized request fails in the caller, and when decoding, so a
/// corrupt length header cannot make the reader allocate without bound.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// Free space guaranteed before each read, so small frames arrive in batches.
const MIN_READ: usize = 16 * 1024;

/// Appends frames to an output buffer: reserve the header, write the body in
/// place, then patch the length. No intermediate copy of the body.
pub struct FrameWriter;

impl FrameWriter {
    /// Starts a frame at the end of `out` and returns its start offset.
    pub fn begin(out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        start
    }

    /// Finishes the frame started at `start`. On error the partial frame is
    /// removed, leaving `out` as it was before [`FrameWriter::begin`].
    pub fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
        FrameWriter::finish_within(out, start, MAX_FRAME_LEN)
    }

    /// [`FrameWriter::finish`] for a frame that may be up to `limit` bytes
    /// (at most `u32::MAX`): one that goes through shared memory (see
    /// [`crate::shm`]), which is not bound by the socket's limit.
    pub fn finish_within(out: &mut Vec<u8>, start: usize, limit: usize) -> Result<(), EncodeError> {
        let body = out.len() - start - HEADER_LEN;
        if body > limit.min(u32::MAX as usize) {
            out.truncate(start);
            return Err(EncodeError::FrameTooLarge(body));
        }
        out[start..start + HEADER_LEN].copy_from_slice(&(body as u32).to_be_bytes());
        Ok(())
    }

    /// Removes a frame that was begun but will not be sent.
    pub fn abandon(out: &mut Vec<u8>, start: usize) {
        out.truncate(start);
    }
}

/// Splits an incoming byte stream into frame bodies.
///
/// Bytes are read in large chunks, so one wake-up of the reader yields every
/// frame that arrived meanwhile.
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::with_capacity(64 * 1024)
    }
}

impl FrameDecoder {
    pub fn with_capacity(capacity: usize) -> Self {
        FrameDecoder {
            buf: vec![0; capacity.max(HEADER_LEN)],
            start: 0,
            end: 0,
        }
    }

    /// Reads once from `source`, appending what arrived. Returns the number of
    /// bytes read; `0` means end of stream.
    pub fn fill_from<R: Read>(&mut self, source: &mut R) -> io::Result<usize> {
        self.make_room();
        loop {
            match source.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Appends bytes received by other means (a VM port's reads, tests).
    /// Once a frame's header is in, room for the whole frame is made at
    /// once, and none of it is zeroed first: a large frame pushed in many
    /// pieces costs one allocation and one copy of each piece, never a
    /// series of copies of all that came before.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.capacity() - self.end < bytes.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.truncate(self.end);
        let pending = self.end - self.start;
        if let Some(len) = self.pending_len(bytes) {
            let frame = HEADER_LEN + len.min(MAX_FRAME_LEN);
            self.buf.reserve(frame.saturating_sub(pending).max(bytes.len()));
        }
        self.buf.extend_from_slice(bytes);
        self.end = self.buf.len();
    }

    /// Returns the next complete frame body, `Ok(None)` when more bytes are
    /// needed, or an error when the length header is over the limit.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        let available = self.end - self.start;
        if available < HEADER_LEN {
            return Ok(None);
        }
        let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("header slice has HEADER_LEN bytes");
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameTooLarge(len));
        }
        if available < HEADER_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + HEADER_LEN;
        self.start = body_start + len;
        Ok(Some(&self.buf[body_start..body_start + len]))
    }

    /// The next frame's body, if all of it has arrived, left in place (so a
    /// caller can choose where to handle a large one before taking it).
    pub fn peek_frame(&self) -> Option<&[u8]> {
        let available = self.end - self.start;
        if available < HEADER_LEN {
            return None;
        }
        let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .expect("header slice has HEADER_LEN bytes");
        let len = u32::from_be_bytes(header) as usize;
        let body = self.start + HEADER_LEN;
        (available >= HEADER_LEN + len).then(|| &self.buf[body..body + len])
    }

    /// The body length of the frame that the buffered bytes, followed by
    /// `more`, begin with, once its header is among them.
    fn pending_len(&self, more: &[u8]) -> Option<usize> {
        let buffered = &self.buf[self.start..self.end];
        let mut header = [0u8; HEADER_LEN];
        let from_buffer = buffered.len().min(HEADER_LEN);
        header[..from_buffer].copy_from_slice(&buffered[..from_buffer]);
        let from_more = HEADER_LEN - from_buffer;
        if more.len() < from_more {
            return None;
        }
        header[from_buffer..].copy_from_slice(&more[..from_more]);
        Some(u32::from_be_bytes(header) as usize)
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Ensures the buffer can hold the whole pending frame (if its header is
    /// known) plus a read's worth of spare room.
    fn make_room(&mut self) {
        let pending = self.end - self.start;
        let needed = if pending >= HEADER_LEN {
            let header: [u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
                .try_into()
                .expect("header slice has HEADER_LEN bytes");
            let frame = HEADER_LEN + (u32::from_be_bytes(header) as usize).min(MAX_FRAME_LEN);
            frame.saturating_sub(pending)
        } else {
            0
        };
        self.make_room_for(needed.max(MIN_READ));
    }

    fn make_room_for(&mut self, extra: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.len() - self.end >= extra {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < extra {
            let grown = (self.end + extra).max(self.buf.len() * 2);
            self.buf.resize(grown, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = FrameWriter::begin(&mut out);
        out.extend_from_slice(body);
        FrameWriter::finish(&mut out, start).unwrap();
        out
    }

    #[test]
    fn splits_frames_delivered_byte_by_byte() {
        let mut stream = frame(b"hello");
        stream.extend(frame(b""));
        stream.extend(frame(&[7; 100_000]));
        let mut decoder = FrameDecoder::with_capacity(8);
        let mut bodies = Vec::new();
        for byte in stream {
            decoder.push(&[byte]);
            while let Some(body) = decoder.next_frame().unwrap() {
                bodies.push(body.to_vec());
            }
        }
        assert_eq!(bodies, vec![b"hello".to_vec(), vec![], vec![7; 100_000]]);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn rejects_oversized_length_header() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(DecodeError::FrameTooLarge(MAX_FRAME_LEN + 1))
        );
    }

    #[test]
    fn finish_rejects_and_removes_oversized_body() {
        let mut out = b"keep".to_vec();
        let start = FrameWriter::begin(&mut out);
        out.resize(out.len() + MAX_FRAME_LEN + 1, 0);
        assert_eq!(
            FrameWriter::finish(&mut out, start),
            Err(EncodeError::FrameTooLarge(MAX_FRAME_LEN + 1))
        );
        assert_eq!(out, b"keep");
    }

    #[test]
    fn finish_within_allows_frames_over_the_socket_limit_up_to_its_own() {
        let mut out = Vec::new();
        let start = FrameWriter::begin(&mut out);
        out.resize(out.len() + 300, 0);
        assert_eq!(FrameWriter::finish_within(&mut out, start, 299), Err(EncodeError::FrameTooLarge(300)));
        assert!(out.is_empty());
        let start = FrameWriter::begin(&mut out);
        out.resize(out.len() + 300, 0);
        assert_eq!(FrameWriter::finish_within(&mut out, start, 300), Ok(()));
        assert_eq!(out[..HEADER_LEN], 300u32.to_be_bytes());
    }

    #[test]
    fn peek_frame_waits_for_the_whole_frame_and_leaves_it() {
        let stream = frame(&[7u8; 10]);
        let mut decoder = FrameDecoder::with_capacity(16);
        decoder.push(&stream[..8]);
        assert_eq!(decoder.peek_frame(), None);
        decoder.push(&stream[8..]);
        assert_eq!(decoder.peek_frame(), Some(&[7u8; 10][..]));
        assert_eq!(decoder.next_frame().unwrap(), Some(&[7u8; 10][..]));
        assert_eq!(decoder.peek_frame(), None);
    }

    #[test]
    fn pending_len_reads_a_header_split_between_buffer_and_more() {
        let stream = frame(&[1u8; 300]);
        let mut decoder = FrameDecoder::with_capacity(16);
        assert_eq!(decoder.pending_len(&stream[..3]), None);
        assert_eq!(decoder.pending_len(&stream), Some(300));
        decoder.push(&stream[..2]);
        assert_eq!(decoder.pending_len(&stream[2..3]), None);
        assert_eq!(decoder.pending_len(&stream[2..]), Some(300));
    }

    #[test]
    fn fill_from_reads_large_frames_across_reads() {
        let body = vec![3u8; 300_000];
        let stream = frame(&body);
        let mut source: &[u8] = &stream;
        let mut decoder = FrameDecoder::with_capacity(1024);
        let mut got = None;
        while got.is_none() {
            assert!(decoder.fill_from(&mut source).unwrap() > 0);
            got = decoder.next_frame().unwrap().map(|b| b.to_vec());
        }
        assert_eq!(got.unwrap(), body);
    }
}
