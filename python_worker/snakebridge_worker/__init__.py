"""SnakeBridge's Python worker.

Started by the Elixir host as ``python -m snakebridge_worker --fd N``; it
answers calls on that socket until the host closes it. The protocol loop and
the value codec live in the native module ``snakebridge_worker._native``;
``snakebridge_worker.dispatch`` says how a call finds its function and how an
exception is reported.

A result with no by-value form (a class instance, a date, a function...) is
kept in the worker's object table and sent as a handle, which the host can
pass back as an argument or call methods on, until it releases it. A call
may also stream its result (items flow under the host's credit), and a
result that is awaitable (``async def``) runs on the worker's asyncio event
loop (``snakebridge_worker.aio``) while other calls are served.
``snakebridge_worker.evaluate`` runs source code sent by the host.

Values other than the built-in types cross as data where they can (numpy
scalars and arrays, dates, decimals...: ``snakebridge_worker.convert``);
``register_encoder`` gives a type of yours a by-value form, and ``struct``
makes an Elixir struct.

``CallCancelled`` is raised inside a call that the host cancels while it
runs. It derives from ``BaseException`` (like ``KeyboardInterrupt``), so
``except Exception`` in user code does not swallow it.
"""

from snakebridge_worker._native import CallCancelled
from snakebridge_worker.convert import register_encoder, struct

__all__ = ["CallCancelled", "register_encoder", "struct"]
