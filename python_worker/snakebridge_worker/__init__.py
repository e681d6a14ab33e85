"""SnakeBridge's Python worker.

Started by the Elixir host as ``python -m snakebridge_worker --fd N``; it
answers calls on that socket until the host closes it. The protocol loop and
the value codec live in the native module ``snakebridge_worker._native``;
``snakebridge_worker.dispatch`` says how a call finds its function and how an
exception is reported.

``CallCancelled`` is raised inside a call that the host cancels while it
runs. It derives from ``BaseException`` (like ``KeyboardInterrupt``), so
``except Exception`` in user code does not swallow it.
"""

from snakebridge_worker._native import CallCancelled

__all__ = ["CallCancelled"]
