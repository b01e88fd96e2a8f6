"""Signals while a server's loop runs in the main thread.

Python's C-level handler only sets a flag. A signal that lands after the loop last ran
PyErr_CheckSignals() but before it blocks in the poller would wait unseen until the
next I/O; signal.set_wakeup_fd turns it into I/O on a pipe the loop watches (it then
runs the Python handlers itself, and stops if one of the application's raises).

SIGTERM's default would kill the process with replies still queued, and Python's
default SIGINT handler raises KeyboardInterrupt in whatever code runs, a callback
included, cutting it short. Where the application left those defaults, the handler
here asks the loop for a graceful stop instead (a second signal: stop without
waiting); so a KeyboardInterrupt that comes out of a callback can only be the
callback's own. Handlers the application installed itself are left alone.

This is policy, in Python: nothing here is on the loop's hot path.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator, Optional

from simpletcp._loop import Loop


class StopSignals:
    """Ctrl-C and SIGTERM stop ``loop``; every signal wakes it (see the module)."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._read_fd = -1
        self._write_fd = -1
        self._previous_wakeup_fd: Optional[int] = None
        self._previous_sigterm: Any = None
        self._previous_sigint: Any = None

    def install(self) -> int:
        """Take over; returns the descriptor the loop must watch."""
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd,
                                                        warn_on_full_buffer=False)
        # What to put back is noted before ours is set: an application's handler that
        # raises in between (see uninstall) must not leave ours with nothing noted.
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous_sigterm = signal.SIG_DFL
            signal.signal(signal.SIGTERM, self._on_stop_signal)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous_sigint = signal.default_int_handler
            signal.signal(signal.SIGINT, self._on_stop_signal)
        return self._read_fd

    def uninstall(self) -> None:
        """Put back what install() replaced, and close the pipe. Each step can be done
        again: if an application's signal handler raises in the middle (Python runs it
        wherever this thread is), calling uninstall() again finishes the job."""
        self._restore_wakeup_fd()
        self._restore_handlers()
        self._close_pipe()

    def _restore_wakeup_fd(self) -> None:
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None

    def _restore_handlers(self) -> None:
        # Only where this handler is still in place: one the application installed
        # while the loop served is the application's to keep.
        if self._previous_sigterm is not None:
            if signal.getsignal(signal.SIGTERM) == self._on_stop_signal:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        if self._previous_sigint is not None:
            if signal.getsignal(signal.SIGINT) == self._on_stop_signal:
                signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _close_pipe(self) -> None:
        # Each descriptor is forgotten and closed on one line, so that no handler runs
        # between the two: none is closed twice (a number another thread may have
        # reused) or left open.
        if self._read_fd >= 0:
            fd, self._read_fd = self._read_fd, -1; os.close(fd)  # noqa: E702
        if self._write_fd >= 0:
            fd, self._write_fd = self._write_fd, -1; os.close(fd)  # noqa: E702

    def _on_stop_signal(self, signum: int, frame: object) -> None:
        # The loop logs the request, not this handler: Python runs it wherever the main
        # thread is, maybe inside a write to the log's stream, which cannot be re-entered.
        loop = self._loop
        name = signal.Signals(signum).name
        if not loop.stop_requested:
            loop.request_stop(name)
        else:
            loop.request_abort(name)


@contextlib.contextmanager
def watched(loop: Loop) -> Iterator[int]:
    """StopSignals for ``loop`` while the block runs, if this is the main thread (only
    it can set handlers). Yields the descriptor for Loop.run's ``signal_fd``, or -1."""
    if threading.current_thread() is not threading.main_thread():
        yield -1
        return
    signals = StopSignals(loop)
    try:
        yield signals.install()
    finally:
        try:
            signals.uninstall()
        except BaseException:
            # An application's signal handler raised on the way (its way to stop a
            # server; Python runs it wherever this thread is). A step left undone would
            # leave Ctrl-C to the handler of a finished loop, which only logs, or leak
            # the pipe: finish, then let the handler's exception out.
            while True:
                try:
                    signals.uninstall()
                    break
                except BaseException:
                    pass
            raise
