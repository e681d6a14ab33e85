//! A slot's writer thread: moves calls from the pool's queue (and the slot's
//! own queue of calls pinned to its worker) to the worker's socket in
//! batches, and writes control frames (cancel, ping, credit) and object
//! releases.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::{never, select};
use snakebridge_protocol::Message;

use crate::connection::{Action, Connection, Control};
use crate::hooks::Hooks;
use crate::shared::{stale_failure, Job, Shared};
use crate::slot::Slot;
use crate::socket;

/// Most bytes the writer gathers into one `sendmsg`.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most object ids in one release frame (9 bytes each at most).
const MAX_RELEASE_IDS: usize = 64 * 1024;

pub(crate) fn write_loop<H: Hooks>(shared: &Shared<H>, slot: &Slot) {
    let mut courier = shared.hooks.courier();
    let window = shared.config.window.max(1);
    let no_jobs = never::<Job<H::Caller>>();
    let mut batch: Vec<Job<H::Caller>> = Vec::with_capacity(window);
    // A call taken from the queue just as callers' direct writes filled the
    // window: it waits here for room rather than overrunning the window.
    let mut held: Option<Job<H::Caller>> = None;
    let pinned = &shared.pinned[slot.index()];
    loop {
        let Some(conn) = slot.wait_ready(&shared.stopping) else {
            break;
        };
        send_releases(&conn);
        let has_room = conn.in_flight.load(Ordering::Acquire) < window && !conn.is_closed();
        if has_room {
            if let Some(job) = held.take() {
                shared.held.fetch_sub(1, Ordering::AcqRel);
                batch.push(job);
            } else if let Ok(job) = pinned.rx.try_recv() {
                batch.push(job);
            }
        }
        if batch.is_empty() {
            // The reader wakes this thread when replies free room.
            slot.writer_waiting.store(!has_room, Ordering::SeqCst);
            let (jobs, pinned_jobs) = if has_room {
                (&shared.queue_rx, &pinned.rx)
            } else {
                (&no_jobs, &no_jobs)
            };
            let job = select! {
                recv(pinned_jobs) -> job => job,
                recv(jobs) -> job => job,
                recv(slot.control_rx) -> control => {
                    if let Ok(control) = control {
                        write_control(slot, &conn, control);
                    }
                    continue;
                }
                recv(slot.wake_rx) -> _ => continue,
                recv(shared.stop_rx) -> _ => break,
                default(Duration::from_millis(100)) => continue,
            };
            match job {
                Ok(job) if conn.in_flight.load(Ordering::Acquire) < window => batch.push(job),
                Ok(job) => {
                    // Still waiting: it counts against max_queue.
                    shared.held.fetch_add(1, Ordering::AcqRel);
                    held = Some(job);
                    continue;
                }
                Err(_) => break,
            }
        }
        slot.writer_waiting.store(false, Ordering::SeqCst);
        let room = window.saturating_sub(conn.in_flight.load(Ordering::Acquire));
        let mut bytes: usize = batch.iter().map(|j| j.frame.len()).sum();
        while batch.len() < room && bytes < MAX_BATCH_BYTES {
            match pinned.rx.try_recv().or_else(|_| shared.queue_rx.try_recv()) {
                Ok(job) => {
                    bytes += job.frame.len();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        let pinned_jobs = batch.iter().filter(|j| j.pinned.is_some()).count();
        write_batch(shared, &conn, &mut batch, &mut courier);
        pinned.pending.fetch_sub(pinned_jobs, Ordering::AcqRel);
    }
    if let Some(job) = held {
        shared.held.fetch_sub(1, Ordering::AcqRel);
        if job.pinned.is_some() {
            pinned.pending.fetch_sub(1, Ordering::AcqRel);
        }
        shared.requeue(&mut courier, job);
    }
}

/// Tells the worker which objects the host no longer refers to. After every
/// call frame written so far, so none of them can find its object gone.
fn send_releases(conn: &Connection) {
    let ids = std::mem::take(&mut *conn.releases.lock());
    if ids.is_empty() {
        return;
    }
    let mut frames = Vec::with_capacity(ids.len() * 9 + 16);
    for chunk in ids.chunks(MAX_RELEASE_IDS) {
        Message::Release { ids: chunk.to_vec() }
            .write_frame(&mut frames)
            .expect("a release frame is far below the frame limit");
    }
    let _guard = conn.lock_for_writer();
    let mut slices = [IoSlice::new(&frames)];
    let _ = socket::send_all(conn.fd(), &mut slices);
}

fn write_control(slot: &Slot, conn: &Connection, control: Control) {
    if control.incarnation != conn.incarnation || conn.is_dead() {
        return;
    }
    let _guard = conn.lock_for_writer();
    match control.action {
        Action::Send(frame) => {
            let mut slices = [IoSlice::new(&frame)];
            let _ = socket::send_all(conn.fd(), &mut slices);
        }
        Action::Interrupt(frame) => {
            let mut slices = [IoSlice::new(&frame)];
            if socket::send_all(conn.fd(), &mut slices).is_ok() {
                slot.signal_process(conn.os_pid, nix::sys::signal::Signal::SIGUSR1);
            }
        }
        Action::Shutdown => {
            let _ = conn.socket().shutdown(std::net::Shutdown::Write);
        }
        // Sent by `lock_for_writer`.
        Action::Flush => {}
    }
}

/// Writes a batch of calls with one `sendmsg` (more only for partial
/// writes). Calls whose caller has died are dropped instead: nobody waits
/// for their reply.
fn write_batch<H: Hooks>(
    shared: &Shared<H>,
    conn: &Connection,
    batch: &mut Vec<Job<H::Caller>>,
    courier: &mut H::Courier,
) {
    // A cancel that became pending since the batch was taken does not
    // stop it: the batch could as well have been written a moment earlier.
    // Pinned calls must not be turned away for it: they have nowhere else
    // to go.
    if conn.is_retired() || shared.stopping.load(Ordering::Acquire) {
        for job in batch.drain(..) {
            shared.requeue(courier, job);
        }
        return;
    }
    let mut stale = Vec::new();
    batch.retain(|job| {
        if !job.soft && job.pinned.is_some_and(|incarnation| incarnation != conn.incarnation) {
            stale.push(job.call.clone());
            return false;
        }
        if shared.hooks.caller_alive(courier, &job.call.caller) {
            return true;
        }
        if job.call.claim_reply() {
            shared.table.remove(job.call.id);
        }
        false
    });
    for call in stale {
        shared.fail_call(courier, &call, stale_failure());
    }
    let _guard = conn.lock_for_writer();
    batch.retain(|job| job.call.mark_sent(conn.incarnation));
    conn.in_flight.fetch_add(batch.len(), Ordering::AcqRel);
    // A large frame goes as a descriptor of its body in shared memory; the
    // job keeps the frame itself, should it be sent elsewhere.
    let wire: Vec<_> = batch.iter().map(|j| conn.wire_waiting(&j.frame)).collect();
    let mut slices: Vec<IoSlice<'_>> = wire.iter().map(|w| IoSlice::new(w)).collect();
    let result = socket::send_all(conn.fd(), &mut slices);
    drop(slices);
    if let Err((_, written)) = &result {
        // Frames the worker never saw free their shared memory.
        let mut offset = 0;
        for w in &wire {
            if offset >= *written {
                conn.unsent(w);
            }
            offset += w.len();
        }
    }
    let wire_lens: Vec<usize> = wire.iter().map(|w| w.len()).collect();
    drop(wire);
    if let Err((_, written)) = result {
        // Frames wholly written may have started: they fail with the
        // worker. The rest never reached it and go back to the queue.
        // (Their shared regions go with the dying worker's arena.)
        let mut offset = 0;
        for (job, len) in batch.drain(..).zip(wire_lens) {
            offset += len;
            if offset <= written {
                continue;
            }
            conn.in_flight.fetch_sub(1, Ordering::AcqRel);
            if job.call.mark_unsent() {
                shared.requeue(courier, job);
            } else {
                // Cancelled meanwhile: the worker, which never saw the call,
                // will not answer the cancel.
                conn.cancelled_call_answered(job.call.id);
            }
        }
    }
    batch.clear();
}
