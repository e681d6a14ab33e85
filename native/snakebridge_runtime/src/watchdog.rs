//! A pool's watchdog thread: the checks that run on a clock rather than on
//! an event (`max_calls` is enforced by the reader as replies come). Cancelled calls that overrun their grace period and workers that
//! stop answering pings get their worker killed (the supervisor then fails
//! its calls and restarts it); workers past `max_calls` or `max_memory` are
//! drained and replaced; calls whose caller has died are cancelled.

use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::events::{RecycleReason, WorkerEvent};
use crate::hooks::Hooks;
use crate::shared::Shared;
use crate::stats::rss_bytes;

const TICK: Duration = Duration::from_millis(100);
/// Reading RSS and scanning for dead callers cost more: every this many ticks.
const SLOW_EVERY: u32 = 10;

pub(crate) fn watch<H: Hooks>(shared: &Shared<H>) {
    let mut courier = shared.hooks.courier();
    let config = &shared.config;
    let mut tick: u32 = 0;
    loop {
        match shared.stop_rx.recv_timeout(TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        tick = tick.wrapping_add(1);
        let slow = tick % SLOW_EVERY == 0;
        let now = Instant::now();
        for slot in &shared.slots {
            let Some(conn) = slot.connection() else {
                continue;
            };
            if let Some(id) = conn.overdue_cancel(now) {
                let reason = format!(
                    "a cancelled call (id {id}) was still running {:?} later",
                    config.cancel_grace
                );
                kill(slot, &conn, reason);
                continue;
            }
            if conn.is_draining() {
                continue;
            }
            if conn.health_check(config.ping_interval, config.ping_timeout, now) {
                let reason = format!("it did not answer a health check within {:?}", config.ping_timeout);
                kill(slot, &conn, reason);
                continue;
            }
            if slow && config.max_memory.is_some_and(|max| rss_bytes(conn.os_pid) > max) && conn.drain() {
                let reason = RecycleReason::MaxMemory;
                shared.hooks.event(&mut courier, conn.os_pid, WorkerEvent::Recycling { reason });
            }
        }
        if slow {
            cancel_calls_of_dead_callers(shared, &mut courier);
        }
    }
}

fn kill(slot: &crate::slot::Slot, conn: &crate::connection::Connection, reason: String) {
    *conn.kill_reason.lock() = Some(reason);
    slot.kill_process();
}

/// A caller that died will never read its reply: stop its running calls.
/// (Queued ones are dropped by the writer before they are sent.)
fn cancel_calls_of_dead_callers<H: Hooks>(shared: &Shared<H>, courier: &mut H::Courier) {
    let incarnations: Vec<u64> = shared
        .slots
        .iter()
        .filter_map(|s| s.connection().map(|c| c.incarnation))
        .collect();
    for call in shared.table.sent_to_any(&incarnations) {
        if !shared.hooks.caller_alive(courier, &call.caller) {
            shared.table.cancel(call.id, |_| true);
        }
    }
}
