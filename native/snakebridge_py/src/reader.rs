//! The reader thread: reads the protocol socket all the time, so that a
//! cancel reaches the worker while the main thread is busy in user code.
//!
//! It never holds the GIL. Each `read` brings whatever the host has sent;
//! the reader checks the `[kind, id` header of every complete frame, acts on
//! cancels itself, and hands the buffer over to the main thread as it is
//! ([`Inbox::publish`]): calls are decoded by the main thread, into Python
//! objects, straight from the bytes the kernel wrote.
//!
//! All asynchronous signals are blocked here (see
//! [`cancel::with_signals_blocked`]), so they reach the main thread.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use snakebridge_protocol::{DecodeError, Header, Kind, HEADER_LEN, MAX_FRAME_LEN};

use crate::cancel;
use crate::fd::{host_gone, read_appending};
use crate::inbox::{Cancelled, Chunk, End, Inbox};

/// Room for at least this much is made before each read, so small frames
/// arrive in batches.
const MIN_READ: usize = 16 * 1024;
/// Capacity of a new read buffer.
const CHUNK_CAPACITY: usize = 64 * 1024;

/// Starts the reader thread for socket `fd`; cancels of running calls are
/// sent to `main` (the thread running `serve`) as SIGUSR1.
pub(crate) fn spawn(fd: RawFd, inbox: Arc<Inbox>, main: libc::pthread_t) -> io::Result<JoinHandle<()>> {
    let reader = Reader {
        fd,
        inbox,
        main,
        calls: VecDeque::new(),
        next_seq: 1,
        interrupted: 0,
        spare: None,
    };
    cancel::with_signals_blocked(|| {
        thread::Builder::new()
            .name("sb-reader".into())
            .spawn(move || reader.run())
    })
}

struct Reader {
    fd: RawFd,
    inbox: Arc<Inbox>,
    main: libc::pthread_t,
    /// `(id, seq)` of the calls read that may not have finished, oldest
    /// first: those the main thread has not gone past.
    calls: VecDeque<(u64, u64)>,
    /// Calls are numbered in the order they arrive; the main thread counts
    /// them the same way.
    next_seq: u64,
    /// The last call interrupted, so a repeated cancel does not signal again.
    interrupted: u64,
    /// An empty buffer the main thread gave back.
    spare: Option<Chunk>,
}

impl Reader {
    fn run(mut self) {
        // Were this thread to die silently, the main thread would wait for
        // frames forever: a panic (a bug) ends the worker instead.
        let end = panic::catch_unwind(AssertUnwindSafe(|| self.read_all()))
            .unwrap_or_else(|_| End::Io(io::Error::other("the worker's reader thread panicked")));
        self.inbox.finish(end);
    }

    /// Reads until the stream ends or goes wrong. After each read, the
    /// complete frames at the front of the buffer are handed over as one
    /// chunk (the buffer itself), and the partial frame after them, if any,
    /// starts the next buffer. Frames before a bad one are handed over too.
    fn read_all(&mut self) -> End {
        let mut buf = Chunk::with_capacity(CHUNK_CAPACITY);
        loop {
            buf.reserve(room_needed(&buf));
            match read_appending(self.fd, &mut buf) {
                Ok(0) => return End::HostGone,
                Ok(_) => {}
                Err(e) if host_gone(&e) => return End::HostGone,
                Err(e) => return End::Io(e),
            }
            let mut complete = 0;
            let mut failed = None;
            while let Some(len) = whole_frame(&buf[complete..]) {
                let body = match len {
                    Ok(len) => &buf[complete + HEADER_LEN..complete + HEADER_LEN + len],
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                };
                if let Err(e) = self.frame(body) {
                    failed = Some(e);
                    break;
                }
                complete += HEADER_LEN + body.len();
            }
            if complete > 0 {
                let mut next = self.spare.take().unwrap_or_else(|| Chunk::with_capacity(CHUNK_CAPACITY));
                next.extend_from_slice(&buf[complete..]);
                buf.truncate(complete);
                self.spare = self.inbox.publish(std::mem::replace(&mut buf, next));
            }
            if let Some(e) = failed {
                return End::Protocol(e.to_string());
            }
            self.forget_finished();
        }
    }

    fn frame(&mut self, body: &[u8]) -> Result<(), DecodeError> {
        let mut rest = body;
        let header = Header::read(&mut rest)?;
        match header.kind {
            Kind::Call => {
                self.calls.push_back((header.id, self.next_seq));
                self.next_seq += 1;
            }
            Kind::Ping => no_trailing(rest)?,
            // Handed over too; the main thread skips it.
            Kind::Cancel => {
                no_trailing(rest)?;
                self.cancel(header.id);
            }
            other => return Err(DecodeError::Invalid(format!("unexpected {other:?} message"))),
        }
        Ok(())
    }

    /// Drops the calls the main thread has gone past: they are answered.
    fn forget_finished(&mut self) {
        let started = self.inbox.started();
        while self.calls.front().is_some_and(|&(_, seq)| seq < started) {
            self.calls.pop_front();
        }
    }

    fn cancel(&mut self, id: u64) {
        self.forget_finished();
        // An id not found was answered already (or never sent): ignored, as
        // its reply is or will be in the host's hands. Cancels are rare, and
        // the list holds only calls not yet answered: a scan is enough.
        let Some(&(_, seq)) = self.calls.iter().rev().find(|&&(call, _)| call == id) else {
            return;
        };
        match self.inbox.cancel(seq) {
            // The main thread replies `cancelled` when it gets there.
            Cancelled::Queued => {}
            Cancelled::Started if seq != self.interrupted => {
                self.interrupted = seq;
                cancel::interrupt(self.main, seq);
            }
            Cancelled::Started => {}
        }
    }
}

/// The body length of the frame at the front of `buf` if all of it is
/// there; an error for a length over the limit.
fn whole_frame(buf: &[u8]) -> Option<Result<usize, DecodeError>> {
    let header: [u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Some(Err(DecodeError::FrameTooLarge(len)));
    }
    (buf.len() >= HEADER_LEN + len).then_some(Ok(len))
}

/// Spare room to make before reading into `buf`, which holds at most one
/// partial frame: the rest of that frame (once its length is known), and at
/// least [`MIN_READ`].
fn room_needed(buf: &[u8]) -> usize {
    let rest_of_frame = match buf.get(..HEADER_LEN) {
        Some(header) => {
            let len = u32::from_be_bytes(header.try_into().expect("HEADER_LEN bytes")) as usize;
            (HEADER_LEN + len.min(MAX_FRAME_LEN)).saturating_sub(buf.len())
        }
        None => 0,
    };
    rest_of_frame.max(MIN_READ)
}

fn no_trailing(rest: &[u8]) -> Result<(), DecodeError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::write_all;
    use crate::inbox::{self, Took};
    use snakebridge_protocol::Message;

    fn socketpair() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    fn close(fd: RawFd) {
        // SAFETY: closing a descriptor this test opened.
        unsafe { libc::close(fd) };
    }

    fn call(id: u64) -> Message {
        Message::Call {
            id,
            deadline: 0,
            module: "m".into(),
            function: "f".into(),
            args: vec![],
            kwargs: vec![],
        }
    }

    fn send(fd: RawFd, messages: &[Message]) {
        let mut out = Vec::new();
        for m in messages {
            m.write_frame(&mut out).unwrap();
        }
        write_all(fd, &out).unwrap();
    }

    /// Takes frames until the reader stops; returns `(kind, id)`s (cancels
    /// included, as the main thread sees them) and the end.
    fn drain(inbox: &Inbox) -> (Vec<(Kind, u64)>, End) {
        let mut frames = Vec::new();
        let mut batch = Vec::new();
        loop {
            match inbox.take(&mut batch) {
                Took::Frames => frames.extend(batch.iter().flat_map(|c| inbox::frames(c)).map(|mut body| {
                    let h = Header::read(&mut body).unwrap();
                    (h.kind, h.id)
                })),
                Took::End(end) => return (frames, end),
                Took::Empty(ticket) => inbox.wait(ticket),
            }
        }
    }

    fn start(fd: RawFd) -> (Arc<Inbox>, JoinHandle<()>) {
        let inbox = Arc::new(Inbox::default());
        // SAFETY: pthread_self has no preconditions.
        let handle = spawn(fd, inbox.clone(), unsafe { libc::pthread_self() }).unwrap();
        (inbox, handle)
    }

    #[test]
    fn queues_calls_and_pings_in_order_then_eof() {
        let (host, worker) = socketpair();
        let (inbox, handle) = start(worker);
        send(host, &[call(7), Message::Ping { id: 8 }, call(9), Message::Cancel { id: 1234 }]);
        close(host);
        let (frames, end) = drain(&inbox);
        handle.join().unwrap();
        close(worker);
        assert_eq!(frames, [(Kind::Call, 7), (Kind::Ping, 8), (Kind::Call, 9), (Kind::Cancel, 1234)]);
        assert!(matches!(end, End::HostGone));
    }

    #[test]
    fn cancel_of_a_queued_call_is_left_to_the_main_thread() {
        let (host, worker) = socketpair();
        let (inbox, handle) = start(worker);
        send(host, &[call(1), call(2), Message::Cancel { id: 2 }]);
        close(host);
        let (frames, _) = drain(&inbox);
        handle.join().unwrap();
        close(worker);
        assert_eq!(frames.len(), 3);
        assert!(!inbox.begin(1));
        assert!(inbox.begin(2), "call 2 is skipped as cancelled");
    }

    #[test]
    fn frames_before_a_bad_one_are_delivered_then_the_error() {
        let (host, worker) = socketpair();
        let (inbox, handle) = start(worker);
        send(host, &[call(1), Message::Ok { id: 5, value: snakebridge_protocol::Value::Nil }, call(2)]);
        let (frames, end) = drain(&inbox);
        handle.join().unwrap();
        close(host);
        close(worker);
        assert_eq!(frames, [(Kind::Call, 1)]);
        match end {
            End::Protocol(message) => assert!(message.contains("unexpected Ok message"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_split_across_reads_and_large_frames_arrive_whole() {
        let (host, worker) = socketpair();
        let (inbox, handle) = start(worker);
        let mut stream = Vec::new();
        Message::Call {
            id: 1,
            deadline: 0,
            module: "m".into(),
            function: "f".into(),
            args: vec![snakebridge_protocol::Value::Bin(vec![7; 3 * CHUNK_CAPACITY])],
            kwargs: vec![],
        }
        .write_frame(&mut stream)
        .unwrap();
        for id in 2..2000 {
            call(id).write_frame(&mut stream).unwrap();
        }
        let writer = std::thread::spawn(move || {
            for piece in stream.chunks(1000) {
                write_all(host, piece).unwrap();
            }
            close(host);
        });
        let (frames, end) = drain(&inbox);
        writer.join().unwrap();
        handle.join().unwrap();
        close(worker);
        assert_eq!(frames, (1..2000).map(|id| (Kind::Call, id)).collect::<Vec<_>>());
        assert!(matches!(end, End::HostGone));
    }

    #[test]
    fn oversized_length_header_is_a_protocol_error() {
        let (host, worker) = socketpair();
        let (inbox, handle) = start(worker);
        write_all(host, &(MAX_FRAME_LEN as u32 + 1).to_be_bytes()).unwrap();
        let (frames, end) = drain(&inbox);
        handle.join().unwrap();
        close(host);
        close(worker);
        assert!(frames.is_empty());
        assert!(matches!(end, End::Protocol(m) if m.contains("exceeds")));
    }

    #[test]
    fn shutdown_of_the_read_side_stops_a_blocked_reader() {
        let (host, worker) = socketpair();
        let (inbox, handle) = start(worker);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: `worker` is open; what `serve` does when it must stop early.
        assert_eq!(unsafe { libc::shutdown(worker, libc::SHUT_RD) }, 0);
        handle.join().unwrap();
        assert!(matches!(drain(&inbox).1, End::HostGone));
        close(host);
        close(worker);
    }
}
