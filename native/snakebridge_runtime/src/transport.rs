//! Where large frames go: the shared-memory arenas of one worker (see
//! `snakebridge_protocol::shm`), one per direction.

use std::borrow::Cow;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use snakebridge_protocol::shm::{self, Arena, Shared};
use snakebridge_protocol::HEADER_LEN;

/// The host's mappings of one worker's arenas.
#[derive(Clone)]
pub struct Arenas {
    /// Calls and other frames to the worker; the host allocates.
    pub calls: Arc<Arena>,
    /// Replies from the worker; the host frees.
    pub replies: Arc<Arena>,
}

impl Arenas {
    /// Creates both arenas, each for `capacity` bytes of frames, and returns
    /// their memfds for the worker (calls, replies).
    pub fn create(capacity: usize) -> std::io::Result<(Arenas, (OwnedFd, OwnedFd))> {
        let (calls, calls_fd) = Arena::create("snakebridge-calls", capacity)?;
        let (replies, replies_fd) = Arena::create("snakebridge-replies", capacity)?;
        Ok((
            Arenas {
                calls: Arc::new(calls),
                replies: Arc::new(replies),
            },
            (calls_fd, replies_fd),
        ))
    }

    /// Bytes of both arenas in use.
    pub fn in_use(&self) -> u64 {
        ((self.calls.used_blocks() + self.replies.used_blocks()) * shm::BLOCK) as u64
    }

    /// The bytes to write for `frame` (header included): a descriptor when
    /// its body is large and fits in the calls arena, else the frame itself.
    pub fn wire<'a>(&self, frame: &'a [u8]) -> Cow<'a, [u8]> {
        if frame.len() < HEADER_LEN + shm::SHARED_MIN {
            return Cow::Borrowed(frame);
        }
        match self.calls.place(&frame[HEADER_LEN..]) {
            Some(descriptor) => Cow::Owned(descriptor),
            None => Cow::Borrowed(frame),
        }
    }

    /// Frees the shared region of `wire` (from [`Arenas::wire`]) when it
    /// was not sent after all; a frame that is no descriptor has none.
    pub fn unsent(&self, wire: &[u8]) {
        self.calls.unplace(wire);
    }

    /// The reply body `body` names, if it is a descriptor, left in place.
    pub fn peek_reply<'a>(&'a self, body: &'a [u8]) -> Option<&'a [u8]> {
        match shm::described(body)? {
            Ok((offset, len)) => self.replies.view(offset, len).ok(),
            Err(_) => None,
        }
    }

    /// The reply body a descriptor from the worker names, or None when
    /// `body` is no descriptor. Err for one outside the arena.
    pub fn reply(&self, body: &[u8]) -> Option<Result<Shared, String>> {
        shm::described(body).map(|named| {
            named
                .and_then(|(offset, len)| self.replies.take(offset, len))
                .map_err(|e| format!("worker sent a bad descriptor: {e}"))
        })
    }
}
