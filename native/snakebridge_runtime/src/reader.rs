//! Reading one worker's messages: replies, stream items, `started`, pongs
//! and output, each routed to where it goes.
//!
//! After the handshake the supervisor hands the worker's socket to a
//! [`Reader`]. The embedder may take it ([`Hooks::attach`]) and feed it the
//! frames it reads itself: the NIF reads them through a VM port on a dup of
//! the socket, which the schedulers poll, so a reply wakes one scheduler
//! instead of a reader thread and then a scheduler. An embedder that
//! declines leaves the reading to the supervisor thread ([`Reader::run`]).
//! Either way, every frame goes through [`Reader::route`] (a large one
//! after [`Reader::shared`] has found its body in the worker's shared
//! memory), and the reader ends once, with [`Reader::finish`], which is what the supervisor waits
//! for before it fails what the worker left unanswered.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;
use snakebridge_protocol::{
    handle_ids, DecodeError, FrameDecoder, Header, Kind, Message, Value, OUTPUT_LOGGING, OUTPUT_STDERR, OUTPUT_STDOUT,
};

use crate::connection::Connection;
use crate::exit::ExitNotice;
use crate::events::{Failure, Level, PythonError, Reason, RecycleReason, Stream, Timing, WorkerEvent};
use crate::hooks::{Hooks, Outcome};
use crate::log::Entry;
use crate::object::Origin;
use crate::shared::Shared;
use crate::slot::Slot;
use snakebridge_protocol::shm::Shared as SharedBody;

/// The embedder's say in who reads a new worker's socket: it is offered
/// each worker's [`Reader`], right after the handshake, on the thread that
/// would otherwise read. An embedder that takes it must route every frame
/// and finish it; one that hands it back (the default) leaves the reading
/// to that thread. Starting a pool needs it; everything else needs only
/// [`Hooks`].
pub trait Attach: Hooks + Sized {
    fn attach(&self, _courier: &mut Self::Courier, reader: Reader<Self>) -> Result<(), Reader<Self>> {
        Err(reader)
    }
}

/// The read side of one worker process's socket, from its handshake to its
/// end. Dropping a reader that was not finished ends it as broken (its
/// worker is then killed and replaced): so an embedder that loses it, for
/// example in a process that died, cannot leave the worker unread.
pub struct Reader<H: Hooks> {
    shared: Arc<Shared<H>>,
    slot: Arc<Slot>,
    conn: Arc<Connection>,
    notice: Arc<ExitNotice>,
    done: Option<Sender<Ended>>,
}

/// How reading a worker's socket ended.
pub(crate) enum Ended {
    /// The socket reached its end: every frame the worker sent was routed.
    Closed,
    /// The worker broke the protocol.
    Broke(String),
    /// The host stopped reading (the embedder lost its reader).
    Lost(String),
}

impl<H: Hooks> Reader<H> {
    pub(crate) fn new(
        shared: Arc<Shared<H>>,
        slot: Arc<Slot>,
        conn: Arc<Connection>,
        notice: Arc<ExitNotice>,
        done: Sender<Ended>,
    ) -> Self {
        Reader {
            shared,
            slot,
            conn,
            notice,
            done: Some(done),
        }
    }

    /// Runs `wake`, on another thread, once the worker process has exited
    /// and its socket is shut down: then whatever the socket still holds
    /// is the last of what the worker sent. For a reader that may not see
    /// the socket's end by itself.
    pub fn on_exit(&self, wake: impl FnOnce() + Send + 'static) {
        self.notice.on_exit(Box::new(wake));
    }

    /// The host's end of the worker's socket. Read it, do not close it; the
    /// runtime writes calls to it meanwhile. A reader of its own needs a
    /// dup, and may make it non-blocking: the runtime's writes expect that.
    pub fn fd(&self) -> RawFd {
        self.conn.fd()
    }

    /// OS pid of the worker process.
    pub fn os_pid(&self) -> u32 {
        self.conn.os_pid
    }

    /// Sends the calls queued for the worker while it was busy: after a
    /// batch of frames routed, since the replies made room for them.
    pub fn flush(&self) {
        self.conn.flush();
    }

    /// The reply body `body` names in the worker's shared memory, or None
    /// when it is an ordinary frame. Route the bytes of what it returns;
    /// dropping that hands the memory back to the worker.
    pub fn shared(&self, body: &[u8]) -> Option<Result<SharedBody, String>> {
        self.conn.arenas().and_then(|arenas| arenas.reply(body))
    }

    /// What the frame `body` carries, left in place: the body itself, or
    /// the shared memory it names (or the descriptor, if it names none).
    pub fn peek<'a>(&'a self, body: &'a [u8]) -> &'a [u8] {
        self.conn.arenas().and_then(|arenas| arenas.peek_reply(body)).unwrap_or(body)
    }

    /// Routes one frame's body (without its 4-byte length). Err means the
    /// worker broke the protocol: finish the reader with it.
    pub fn route(&self, courier: &mut H::Courier, body: &[u8]) -> Result<(), String> {
        let routed = route_reply(&self.shared, &self.slot, &self.conn, body, courier);
        // Each reply may free room in the window a writer waits for.
        self.slot.wake_writer();
        routed.map_err(|e| format!("worker sent a bad message: {e}"))
    }

    /// Ends the reader: `Ok` at the end of the socket (every frame the
    /// worker sent was routed), `Err` when the worker broke the protocol.
    pub fn finish(mut self, result: Result<(), String>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(match result {
                Ok(()) => Ended::Closed,
                Err(problem) => Ended::Broke(problem),
            });
        }
    }

    /// Reads and routes frames on this thread until the socket ends.
    pub(crate) fn run(self, courier: &mut H::Courier) {
        let result = self.read_all(courier);
        self.finish(result);
    }

    fn read_all(&self, courier: &mut H::Courier) -> Result<(), String> {
        let mut decoder = FrameDecoder::default();
        let mut socket = self.conn.socket();
        loop {
            while let Some(body) = decoder.next_frame().map_err(|e| format!("worker sent a bad frame: {e}"))? {
                let shared = self.shared(body).transpose()?;
                let body = shared.as_ref().map_or(body, SharedBody::bytes);
                route_reply(&self.shared, &self.slot, &self.conn, body, courier)
                    .map_err(|e| format!("worker sent a bad message: {e}"))?;
            }
            self.flush();
            self.slot.wake_writer();
            match decoder.fill_from(&mut socket) {
                // A worker killed with calls it had not read resets the
                // socket: its exit, not the reset, says what happened.
                Ok(0) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("socket: {e}")),
            }
        }
    }
}

impl<H: Hooks> Drop for Reader<H> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Ended::Lost("the reader of its socket went away".to_owned()));
        }
    }
}

fn route_reply<H: Hooks>(
    shared: &Shared<H>,
    slot: &Arc<Slot>,
    conn: &Arc<Connection>,
    body: &[u8],
    courier: &mut H::Courier,
) -> Result<(), DecodeError> {
    let mut fields = body;
    let header = Header::read(&mut fields)?;
    let mut origin = Origin {
        pool: shared.id,
        slot,
        conn,
        affinity: &shared.affinity,
        owner: 0,
    };
    match header.kind {
        Kind::Ok | Kind::PyError | Kind::Failure => {}
        Kind::Items => return route_items(shared, &mut origin, header.id, fields, courier),
        Kind::Started => {
            if !conn.detach(header.id) {
                return Err(DecodeError::Invalid(format!("call {} started, but none was sent", header.id)));
            }
            return Ok(());
        }
        Kind::Pong => {
            conn.pong();
            return Ok(());
        }
        Kind::Output => return route_output(shared, conn, body, courier),
        Kind::Timing => {
            conn.heard();
            let Message::Timing { started_at, python_us, .. } = Message::decode(body)? else {
                unreachable!("kind checked above")
            };
            let timing = Timing {
                os_pid: conn.os_pid,
                started_at,
                python_us,
            };
            conn.stash_timing(header.id, timing);
            return Ok(());
        }
        other => return Err(DecodeError::Invalid(format!("unexpected {other:?} message"))),
    }
    if !conn.finish(header.id) {
        return Err(DecodeError::Invalid(format!("reply to call {} that was never sent", header.id)));
    }
    let replies = conn.replies.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.config.max_calls == Some(replies) && conn.drain() {
        let reason = RecycleReason::MaxCalls;
        shared.hooks.event(courier, conn.os_pid, WorkerEvent::Recycling { reason });
    }
    let timing = conn.take_timing(header.id);
    conn.heard();
    slot.calls.fetch_add(1, Ordering::Relaxed);
    if header.kind != Kind::Ok {
        slot.errors.fetch_add(1, Ordering::Relaxed);
    }
    if header.kind != Kind::Failure {
        shared.breaker.success();
    }
    let call = shared.table.get(header.id);
    if let Some(call) = &call {
        if call.written_to() != conn.incarnation {
            return Err(DecodeError::Invalid(format!("reply to call {} that was not sent to it", header.id)));
        }
        // The objects in the result are its caller's.
        origin.owner = call.owner;
    }
    let outcome = match header.kind {
        Kind::Ok => Outcome::Ok(fields, &origin),
        _ => match Message::decode(body)? {
            Message::PyError {
                exc_type,
                exc_module,
                message,
                traceback,
                attributes,
                ..
            } => {
                let mut encoded = Vec::new();
                Value::Map(attributes)
                    .encode(&mut encoded)
                    .map_err(|e| DecodeError::Invalid(format!("exception attributes: {e}")))?;
                Outcome::PythonError(PythonError {
                    exc_type,
                    exc_module,
                    message,
                    traceback,
                    attributes: encoded,
                })
            }
            Message::Failure { reason, message, .. } => {
                let reason = Reason::from_worker(&reason)
                    .ok_or_else(|| DecodeError::Invalid(format!("unknown failure reason {reason:?}")))?;
                Outcome::Failed(Failure::new(reason, message))
            }
            _ => unreachable!("kind checked above"),
        },
    };
    if let Some(call) = call {
        if call.claim_reply() {
            // Counted only once claimed: a caller's own timeout that won the
            // race was counted by its cancel.
            if let Outcome::Failed(Failure { reason: Reason::Timeout, .. }) = outcome {
                shared
                    .breaker
                    .failure(|| format!("call {} passed its deadline on Python worker {}", header.id, conn.os_pid));
            }
            let delivered = match timing {
                None => shared.hooks.deliver(courier, &call.caller, outcome),
                Some(timing) => shared.hooks.deliver_timed(courier, &call.caller, outcome, timing),
            };
            shared.table.remove(header.id);
            return delivered;
        }
    }
    // Nothing else ends a sent call while its worker runs: it was cancelled
    // (and is gone from the table, or about to be). The reply is dropped.
    conn.cancelled_call_answered(header.id);
    release_unread(&origin, &outcome)
}

/// Delivers a stream's next items, unless it was cancelled.
fn route_items<H: Hooks>(
    shared: &Shared<H>,
    origin: &mut Origin<'_>,
    id: u64,
    fields: &[u8],
    courier: &mut H::Courier,
) -> Result<(), DecodeError> {
    origin.conn.heard();
    let Some(call) = shared.table.get(id) else {
        return release_unread(origin, &Outcome::Items(fields, origin));
    };
    if call.written_to() != origin.conn.incarnation {
        return Err(DecodeError::Invalid(format!("items for call {id} that was not sent to it")));
    }
    origin.owner = call.owner;
    let origin = &*origin;
    let outcome = Outcome::Items(fields, origin);
    if !call.claim_items() {
        return release_unread(origin, &outcome);
    }
    let delivered = shared.hooks.deliver(courier, &call.caller, outcome);
    call.items_delivered();
    if delivered.is_err() && call.claim_reply() {
        // The embedder answered the stream with the error already; the
        // worker is replaced without answering it again.
        shared.table.remove(id);
    }
    delivered
}

/// Sends a line the worker's Python code wrote during a call to that call's
/// caller, if it asked for its output ([`Hooks::output`]); else queues it
/// for the log, with the call if its caller still waits.
fn route_output<H: Hooks>(
    shared: &Shared<H>,
    conn: &Connection,
    body: &[u8],
    courier: &mut H::Courier,
) -> Result<(), DecodeError> {
    conn.heard();
    let Message::Output {
        id,
        source,
        level,
        text,
        module,
        function,
    } = Message::decode(body)?
    else {
        unreachable!("kind checked by the caller")
    };
    let stream = match source {
        OUTPUT_STDOUT => Stream::Stdout,
        OUTPUT_STDERR => Stream::Stderr,
        OUTPUT_LOGGING => Stream::Logging,
        other => return Err(DecodeError::Invalid(format!("unknown output source {other}"))),
    };
    let level = match stream {
        Stream::Logging => Level::from_python(level),
        _ => Level::of_stream(stream),
    };
    // A worker names only its own calls.
    let call = (id != 0)
        .then(|| shared.table.get(id))
        .flatten()
        .filter(|call| call.written_to() == conn.incarnation);
    if let (Some(call), Stream::Stdout | Stream::Stderr) = (&call, stream) {
        // Claimed as a stream's items are, so that once a cancel returns
        // no line of the call reaches its caller any more.
        if call.claim_items() {
            let sent = shared.hooks.output(courier, &call.caller, stream, text.as_bytes());
            call.items_delivered();
            if sent {
                return Ok(());
            }
        }
    }
    shared.logs.push(Entry {
        os_pid: conn.os_pid,
        stream,
        level,
        text: text.into_bytes(),
        call,
        module,
        function,
    });
    Ok(())
}

/// Releases the objects in a result nobody will read (its call was
/// cancelled), which would otherwise stay in the worker for good.
fn release_unread(origin: &Origin<'_>, outcome: &Outcome<'_>) -> Result<(), DecodeError> {
    let (Outcome::Ok(value, _) | Outcome::Items(value, _)) = outcome else {
        return Ok(());
    };
    let ids = handle_ids(value)?;
    if !ids.is_empty() {
        origin.conn.releases.lock().extend(ids);
        origin.slot.wake_writer_now();
    }
    Ok(())
}

