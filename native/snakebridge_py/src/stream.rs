//! Streamed calls (`CALL_STREAM`): the result is iterated and its items go
//! to the host in `items` messages, never more in total than the host's
//! credit allows (the call's window, plus each `credit` message).
//!
//! Sync iterators are stepped by the worker loop, one batch per turn,
//! round-robin, so several streams share the loop fairly and the loop checks
//! for input between batches: calls, pings, credit and cancels are served
//! while streams run or wait for credit. Each `next()` runs marked as the
//! running call (`Running`), so a cancel's signal interrupts a generator
//! that blocks. Async iterables (and coroutines, awaited first) are stepped
//! on the event loop by `snakebridge_worker.aio`; their items are written
//! with the same [`Batch`].

use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyIterator;
use snakebridge_protocol::{FrameWriter, Header, Kind};

use crate::encode::{EncodeFailure, Encoder, Handles};
use crate::objects;
use crate::output::CallInfo;

/// A batch ends after this many items...
pub(crate) const BATCH_ITEMS: u32 = 1024;
/// ...or once it is this big...
pub(crate) const BATCH_BYTES: usize = 1 << 20;
/// ...or this long after it began, so a slow iterator's items still flow.
pub(crate) const BATCH_TIME: Duration = Duration::from_millis(1);
/// A `next()` at least this long marks the stream slow.
pub(crate) const SLOW_NEXT: Duration = Duration::from_micros(500);

/// A sync stream.
pub(crate) struct Stream {
    pub(crate) id: u64,
    pub(crate) iterator: Py<PyIterator>,
    /// Items the host has granted and not yet received.
    pub(crate) credit: u64,
    /// Every item is sent as a handle (`CALL_AS_HANDLE`).
    pub(crate) as_handle: bool,
    /// The last `next()` was slow: see [`Stream::batch_done`].
    pub(crate) slow: bool,
    /// A batch was sent already.
    pub(crate) started: bool,
    /// The call it belongs to, for the lines its `next()` writes.
    pub(crate) call: Option<CallInfo>,
}

impl Stream {
    /// Whether `batch` must end before another `next()`. The loop cannot
    /// tell whether the next `next()` will block, and items held in a batch
    /// meanwhile would wait with it; so, as for calls, the first item goes
    /// alone, as does each item after a slow `next()`, and a fast stream
    /// fills its batches.
    pub(crate) fn batch_done(&self, batch: &Batch, out: &[u8]) -> bool {
        self.credit == 0 || batch.full(out) || ((self.slow || !self.started) && !batch.is_empty())
    }
}

/// One `items` message being written into the reply buffer.
pub(crate) struct Batch {
    id: u64,
    /// Where its frame starts.
    start: usize,
    /// Where the items array's 4-byte length is, patched when it ends.
    count_at: usize,
    count: u32,
    began: Instant,
}

/// Why an item was not added.
pub(crate) enum Refused {
    /// The batch is too big for it; it may fit in a batch of its own.
    Full,
    /// It cannot be sent at all: the stream ends with this failure.
    Failed(EncodeFailure),
}

impl Batch {
    pub(crate) fn begin(out: &mut Vec<u8>, id: u64) -> Batch {
        let start = FrameWriter::begin(out);
        Header { kind: Kind::Items, id }.write(out);
        // Always array32: the count is patched in place once known.
        out.push(0xdd);
        let count_at = out.len();
        out.extend_from_slice(&[0; 4]);
        Batch {
            id,
            start,
            count_at,
            count: 0,
            began: Instant::now(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether the batch should end before another item. An empty batch
    /// never is: every batch makes progress.
    pub(crate) fn full(&self, out: &[u8]) -> bool {
        !self.is_empty()
            && (self.count >= BATCH_ITEMS || out.len() - self.start >= BATCH_BYTES || self.began.elapsed() >= BATCH_TIME)
    }

    /// Appends `item`; on refusal `out` and the object table are as before.
    pub(crate) fn push(&mut self, out: &mut Vec<u8>, item: &Bound<'_, PyAny>, as_handle: bool) -> Result<(), Refused> {
        let mark = out.len();
        let mut registered = Vec::new();
        let mut encoder = Encoder::new(out, self.start, Handles::Register(&mut registered));
        // Depth 1: the items array is the first nesting level.
        let encoded = if as_handle {
            encoder.encode_as_handle(item)
        } else {
            encoder.encode(item, 1)
        };
        match encoded {
            Ok(()) => {
                self.count += 1;
                Ok(())
            }
            Err(failure) => {
                out.truncate(mark);
                objects::release(registered);
                if failure.reason() == "payload_too_large" && !self.is_empty() {
                    Err(Refused::Full)
                } else {
                    Err(Refused::Failed(failure))
                }
            }
        }
    }

    /// Ends the message; an empty batch is dropped.
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        if self.is_empty() {
            FrameWriter::abandon(out, self.start);
            return;
        }
        out[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_be_bytes());
        // Items are encoded against the frame limit as they are added.
        FrameWriter::finish_within(out, self.start, crate::shm::max_payload()).expect("a batch stays within the frame limit");
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

/// Closes an iterator the stream stops early (`close()` if it has one, so a
/// generator's `finally` runs). What `close()` raises is dropped: the
/// stream's end is already decided.
pub(crate) fn close(iterator: &Bound<'_, PyAny>) {
    if let Ok(close) = iterator.getattr("close") {
        let _ = close.call0();
    }
}
