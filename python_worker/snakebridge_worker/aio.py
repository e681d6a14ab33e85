"""The worker's asyncio side: awaited results and async streams, on one event loop.

The native loop (``_native.serve``) owns the socket and decides what runs
when. On the first call whose result is awaitable, or that streams an async
iterable (or a coroutine), it creates one :class:`Runner`, hands such calls
over (``call``, ``stream``), forwards their ``cancel`` and ``credit`` frames,
and runs the event loop (``run``) only when it has nothing else to do: no
frame to handle, no sync stream able to send. ``run`` returns the outcomes
produced meanwhile, which the native loop encodes and writes: replies of
finished tasks, items of async streams and the ends of those streams.

Everything runs on the main thread. A sync call handled between two runs
suspends every task, as in any single-threaded event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from typing import Any, Awaitable, Callable, Optional, Tuple, TypeVar

from snakebridge_worker import _native, output

T = TypeVar("T")

# Outcome kinds, as the native loop reads them.
OK, ERROR, CANCELLED, ITEMS = 0, 1, 2, 3

# An async stream yields to the event loop after this many items, or this
# long after its first unsent item, so the native loop can send a batch even
# when its iterator never suspends.
BATCH_ITEMS = 1024
BATCH_SECONDS = 0.001

# (call id, kind, value, as_handle): the value is the result, the exception
# or the list of items.
Outcome = Tuple[int, int, Any, bool]


class Runner:
    """The event loop and the tasks and async streams running on it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.tasks: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, _Stream] = {}
        self.outcomes: list[Outcome] = []
        # Set by shutdown, whose own run of the loop must not be stopped.
        self.closing = False

    def busy(self) -> bool:
        """Whether anything is pending: the native loop must not block in read(2)."""
        return bool(self.tasks or self.streams or self.outcomes)

    def call(self, call_id: int, awaitable: Awaitable[Any], as_handle: bool) -> None:
        """Runs ``awaitable`` as a task; its result becomes the call's reply."""
        task = _in_call_context(asyncio.ensure_future, awaitable, loop=self.loop)
        self.tasks[call_id] = task
        task.add_done_callback(lambda done: self._task_done(call_id, done, as_handle))

    def stream(self, call_id: int, source: Any, window: int, as_handle: bool) -> None:
        """Streams ``source`` (async iterable, or awaitable of an iterable) under ``window`` credit."""
        self.streams[call_id] = _in_call_context(_Stream, self, call_id, source, window, as_handle)

    def cancel(self, call_id: int) -> None:
        """Cancels a task or stream; it is answered once it has finished cancelling."""
        task = self.tasks.get(call_id)
        if task is None and call_id in self.streams:
            task = self.streams[call_id].task
        if task is not None:
            task.cancel()

    def credit(self, call_id: int, credit: int) -> None:
        """Grants an async stream more items; unknown ids are ignored."""
        stream = self.streams.get(call_id)
        if stream is not None:
            stream.grant(credit)

    def abort(self, call_id: int) -> None:
        """Stops a stream that the native loop already ended (an item could not be sent)."""
        stream = self.streams.get(call_id)
        if stream is not None:
            stream.silent = True
            stream.task.cancel()

    def wake(self) -> None:
        """Called by the cancel signal's handler when it read frames: see ``cancel.rs``.

        The handler runs inside the event loop's ``select`` (which retries
        after running signal handlers) and has emptied the socket, so the
        socket's reader will not fire: writing to the loop's self-pipe is
        what ends the wait. Done even when the loop is not running (the
        signal may land just before ``run`` starts it): the next run then
        just stops after one turn.
        """
        self.loop.call_soon_threadsafe(self._stop)

    def run(self, block: bool) -> list[Outcome]:
        """Runs the event loop and returns the outcomes produced.

        With ``block``, until the socket is readable or something produced an
        outcome; else for one turn without waiting.
        """
        if not self.outcomes:
            if block:
                self.loop.add_reader(self.fd, self.loop.stop)
            else:
                self.loop.stop()
            try:
                self.loop.run_forever()
            except BaseException as exc:
                # KeyboardInterrupt and SystemExit raised by a task end the
                # task (its reply reports them) and also escape the loop.
                if not self._ended_a_task(exc):
                    raise
            finally:
                if block:
                    self.loop.remove_reader(self.fd)
        for stream in self.streams.values():
            stream.flush()
        outcomes, self.outcomes = self.outcomes, []
        return outcomes

    def finish(self) -> list[Outcome]:
        """Lets the tasks still running finish (the host sent its last frame
        but reads on) and returns every outcome produced meanwhile."""
        tasks = list(self.tasks.values())
        if tasks:
            # Outcomes end a run of the loop early (``_stop``); not this one.
            self.closing = True
            try:
                self.loop.run_until_complete(asyncio.wait(tasks))
            finally:
                self.closing = False
        for stream in self.streams.values():
            stream.flush()
        outcomes, self.outcomes = self.outcomes, []
        return outcomes

    def shutdown(self) -> None:
        """Cancels what is still pending and closes the loop (``serve`` is over)."""
        self.closing = True
        pending = list(self.tasks.values()) + [stream.task for stream in self.streams.values()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=1.0))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def _task_done(self, call_id: int, task: asyncio.Future[Any], as_handle: bool) -> None:
        del self.tasks[call_id]
        if task.cancelled():
            self._emit((call_id, CANCELLED, None, False))
        elif task.exception() is not None:
            self._emit((call_id, ERROR, task.exception(), False))
        else:
            self._emit((call_id, OK, task.result(), as_handle))

    def _emit(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self._stop()

    def _stop(self) -> None:
        """Ends this run of the loop after the current turn, for the native loop to send what is ready."""
        if not self.closing:
            self.loop.stop()

    def _ended_a_task(self, exc: BaseException) -> bool:
        tasks = list(self.tasks.values()) + [stream.task for stream in self.streams.values()]
        return any(task.done() and not task.cancelled() and task.exception() is exc for task in tasks)


class _Stream:
    """One async stream: a task steps the iterator while the host's credit lasts."""

    def __init__(self, runner: Runner, call_id: int, source: Any, credit: int, as_handle: bool) -> None:
        self.runner = runner
        self.call_id = call_id
        self.credit = credit
        self.as_handle = as_handle
        self.granted = asyncio.Event()
        self.items: list[Any] = []
        self.first_unsent: Optional[float] = None
        # Ends the run of the loop once the first unsent item has waited
        # BATCH_SECONDS, so a slow iterator's items still flow.
        self.timer: Optional[asyncio.TimerHandle] = None
        # Set when the native loop already sent this stream's end.
        self.silent = False
        self.task = runner.loop.create_task(self._drive(source))
        self.task.add_done_callback(self._done)

    def grant(self, credit: int) -> None:
        self.credit += credit
        self.granted.set()

    def flush(self) -> None:
        """Hands the items produced so far to the native loop."""
        if self.items and not self.silent:
            self.runner.outcomes.append((self.call_id, ITEMS, self.items, self.as_handle))
        self.items = []
        self.first_unsent = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def _drive(self, source: Any) -> None:
        iterator: Any = None
        try:
            if inspect.isawaitable(source):
                source = await source
            asynchronous = hasattr(source, "__aiter__")
            iterator = source.__aiter__() if asynchronous else iter(source)
            while True:
                while self.credit == 0:
                    self.granted.clear()
                    await self.granted.wait()
                try:
                    item = await iterator.__anext__() if asynchronous else next(iterator)
                except (StopIteration, StopAsyncIteration):
                    return
                self.credit -= 1
                self._produced(item)
                # An iterator that never suspends must still let the loop
                # stop, for the batch to be sent.
                if len(self.items) >= BATCH_ITEMS or self.runner.loop.time() - (self.first_unsent or 0) >= BATCH_SECONDS:
                    await asyncio.sleep(0)
        except BaseException:
            if iterator is not None:
                await _close(iterator)
            raise

    def _produced(self, item: Any) -> None:
        """Adds an item to the batch; a full batch, or one that used the last credit, goes at once."""
        if not self.items:
            self.first_unsent = self.runner.loop.time()
            self.timer = self.runner.loop.call_later(BATCH_SECONDS, self.runner._stop)
        self.items.append(item)
        if len(self.items) >= BATCH_ITEMS or self.credit == 0:
            self.runner._stop()

    def _done(self, task: asyncio.Future[Any]) -> None:
        del self.runner.streams[self.call_id]
        self.flush()
        if self.silent:
            if not task.cancelled():
                task.exception()
            return
        if task.cancelled():
            self.runner._emit((self.call_id, CANCELLED, None, False))
        elif task.exception() is not None:
            self.runner._emit((self.call_id, ERROR, task.exception(), False))
        else:
            self.runner._emit((self.call_id, OK, None, False))


def _in_call_context(make: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Runs ``make`` (which creates a task) in a context that names the running
    call, so that the task's output is that call's (see ``output.CALL``)."""
    context = contextvars.copy_context()
    context.run(output.CALL.set, _native.current_call())
    return context.run(make, *args, **kwargs)


async def _close(iterator: Any) -> None:
    """Closes an iterator the stream stops early, so a generator's ``finally`` runs.

    What closing raises is dropped: the stream's end is already decided.
    """
    with contextlib.suppress(Exception):
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
