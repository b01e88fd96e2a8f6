"""Supervisor: N worker processes serving one listening socket (TCPServer(workers=N)).

The supervisor binds nothing and serves nothing itself: it holds the listening socket
it was given, forks the workers (each a TCPServer serving that socket in its own
process, with its own loop and callback state), replaces a worker that dies, and stops
them all gracefully on Ctrl-C, SIGTERM or stop().

Why one socket shared before fork rather than SO_REUSEPORT: every worker accepts from
the one accept queue, so a worker that stops (a graceful stop, a crash) leaves the
connections waiting in it to the others; with SO_REUSEPORT each worker has its own
queue, the kernel hashes each new connection to one of them, and those hashed to a
worker that closes its socket are reset. The supervisor keeps the socket open until it
stops, so while a worker is replaced nothing is refused. README's "Deploying"
section and BENCHMARKS.md say what it costs (balance).
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional


logger = logging.getLogger("simpletcp")

#: A worker that died this soon after it started is restarted after a back-off that
#: doubles at each such death, from RESTART_DELAY_FIRST up to RESTART_DELAY_MAX; one
#: that lived longer is restarted after RESTART_DELAY_FIRST (a crash now and then is
#: not a crash loop).
RESTART_DELAY_FIRST = 0.1
RESTART_DELAY_MAX = 10.0
STABLE_SECONDS = 10.0
#: After the grace period, how long the supervisor still waits for workers that were
#: asked to stop before it kills them (their own loop ends at its grace period).
STOP_MARGIN_SECONDS = 5.0
#: Blocked while the supervisor takes or gives back what must not be half done when a
#: signal handler of the application's raises (Python runs it wherever the main thread
#: is): the signal handling, a worker's fork and the noting of its pid, the teardown.
ALL_SIGNALS = signal.valid_signals()
#: prctl(PR_SET_PDEATHSIG): a worker is sent SIGTERM when its supervisor dies.
PR_SET_PDEATHSIG = 1


class WorkerSlot:
    """One of the N places a worker process fills: its process, and its restart back-off."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.pid: Optional[int] = None
        self.started_at = 0.0
        self.restart_delay = RESTART_DELAY_FIRST
        self.restart_at: Optional[float] = None  # when to start it again, if it died


class Supervisor:
    """Serve ``listener`` with ``worker_count`` processes, each running ``serve_worker()``.

    ``serve_worker`` runs in the forked child and serves until the child is asked to
    stop (SIGTERM); it is a TCPServer(sock=listener, ...).run(). ``run()`` must be
    called from the main thread of a process that has no other threads yet (fork copies
    only the calling thread: a lock another thread holds would stay held in the child).
    """

    def __init__(self, listener: socket.socket, worker_count: int,
                 serve_worker: Callable[[], None], grace_period: float) -> None:
        self.listener = listener
        self.serve_worker = serve_worker
        self.grace_period = grace_period
        self.slots = [WorkerSlot(number) for number in range(1, worker_count + 1)]
        self._ran = False  # run() has begun: a supervisor runs once (its listener closes)
        self._stop_requested = False
        self._stops_asked = 0  # how many times stop was asked: the second one hurries
        self._stop_signals: List[int] = []  # received, not yet logged (see _watch_signals)
        # The wake-up pipe (signals, stop()) is open while run() runs, and only then: a
        # supervisor that never runs holds no descriptor, and a stop() after run() must
        # not write into whatever has taken the pipe's descriptor number since. The lock
        # keeps another thread's stop() from writing while run() closes it; re-entrant,
        # for a signal handler's stop() that lands in the main thread meanwhile.
        self._wake_read = self._wake_write = -1
        self._wake_lock = threading.RLock()
        self._supervisor_pid = os.getpid()
        # What run() replaced, each noted before it is replaced, to be put back.
        self._signal_mask: Iterable[int] = ()  # the thread's, as run() found it
        self._previous_handlers: Dict[int, Any] = {}
        self._previous_wakeup_fd: Optional[int] = None

    @property
    def worker_pids(self) -> List[int]:
        """The process ids of the workers alive now."""
        return [slot.pid for slot in self.slots if slot.pid is not None]

    # ---- the supervisor's loop ----------------------------------------------------

    def run(self) -> None:
        """Start the workers and keep them running until stop(), Ctrl-C or SIGTERM; then
        stop them gracefully and wait for them. The listener is closed on return."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("a server with workers must run() in the main thread "
                               "(it handles SIGCHLD, SIGINT and SIGTERM)")
        if self._ran:
            raise RuntimeError("this Supervisor has already run; create a new one")
        self._ran = True
        self._signal_mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())  # as it is
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
            self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._watch_signals()
            signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)
            for slot in self.slots:
                if self._stop_requested:
                    break  # stopped while starting: no more workers to stop
                self._start(slot)
            while not self._stop_requested:
                self._wait(self._next_restart_in())
                self._reap()
                self._restart_due()
            self._stop_workers()
        finally:
            try:
                self._release()
            except BaseException:
                self._release()  # a signal handler's exception cut it short: finish
                raise

    def _release(self) -> None:
        """Kill the workers left (only if run() failed half-way), give the signal
        handling back, close the wake-up pipe and the listener. Each step can be done
        again (see run()).

        An application's signal handler that raises (its way to stop, say SystemExit)
        runs wherever the main thread is: a worker killed but not reaped, a handler not
        put back, a wake-up descriptor left to a closed pipe (the next signal written
        into whatever file took its number) would be the price of a step cut short.
        So every signal waits while this runs (the handlers of those already on their
        way run as the mask is set, and may raise: run() calls this again)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
        self._kill_workers()
        self._unwatch_signals()
        self.listener.close()
        self._close_wake_pipe()
        self._discard_stop_signals()
        signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)

    @staticmethod
    def _discard_stop_signals() -> None:
        """A stop signal that came while the supervisor stopped (blocked by _release)
        was the supervisor's: the handler put back (the default's: death, or
        KeyboardInterrupt) must not take it as the signals are unblocked."""
        while signal.sigtimedwait((signal.SIGINT, signal.SIGTERM), 0) is not None:
            pass

    def stop(self) -> None:
        """Ask the supervisor to stop its workers (from any thread or a signal handler).
        A second call hurries the workers (they close without waiting).

        In a worker (a callback that stops the server it is served by, as it may in one
        process) it asks the supervisor, as SIGTERM does: every worker stops, this one
        too. The worker's copy of this object has no pipe or workers of its own."""
        if os.getpid() != self._supervisor_pid:
            if os.getppid() == self._supervisor_pid:  # not a process that took its pid
                os.kill(self._supervisor_pid, signal.SIGTERM)
            return
        self._stop_requested = True
        self._stops_asked += 1
        if self._stops_asked > 1:
            self._signal_workers(signal.SIGTERM)  # a second one: no more waiting
        with self._wake_lock:
            if self._wake_write >= 0:  # else run() has not begun (it sees the flag) or ended
                try:
                    os.write(self._wake_write, b"s")
                except BlockingIOError:
                    pass  # a wake-up is already pending

    def _close_wake_pipe(self) -> None:
        with self._wake_lock:
            # Each descriptor is forgotten and closed on one line, so that no signal
            # handler's stop() runs between the two.
            if self._wake_read >= 0:
                fd, self._wake_read = self._wake_read, -1; os.close(fd)  # noqa: E702
            if self._wake_write >= 0:
                fd, self._wake_write = self._wake_write, -1; os.close(fd)  # noqa: E702

    def _watch_signals(self) -> None:
        """Take SIGINT, SIGTERM, SIGCHLD and the wake-up descriptor (every signal
        blocked: see run()), noting each thing replaced before replacing it."""
        def on_stop_signal(signum: int, frame: object) -> None:
            # Nothing is logged here: Python runs this wherever the main thread is, and
            # that may be inside a write to the log's stream, which refuses to be
            # re-entered (RuntimeError): the stop would be lost with the log line. The
            # loop logs it once woken (_log_stop_signals).
            self._stop_signals.append(signum)
            self.stop()

        def on_child(signum: int, frame: object) -> None:
            pass  # set_wakeup_fd already woke the loop

        for signum, handler in ((signal.SIGINT, on_stop_signal),
                                (signal.SIGTERM, on_stop_signal),
                                (signal.SIGCHLD, on_child)):
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        self._previous_wakeup_fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _unwatch_signals(self) -> None:
        """Put back what _watch_signals replaced; each step can be done again."""
        if self._previous_wakeup_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            self._previous_wakeup_fd = None
        for signum in list(self._previous_handlers):
            previous = self._previous_handlers[signum]
            if previous is not None:  # None: a handler not set from Python, left as it is
                signal.signal(signum, previous)
            del self._previous_handlers[signum]

    def _wait(self, timeout: Optional[float]) -> None:
        """Until a signal (a worker died, stop) or ``timeout`` seconds (a restart due)."""
        # poll(), not select(): the pipe's number may be above FD_SETSIZE (1024) in a
        # process that has many files open.
        waiting = select.poll()
        waiting.register(self._wake_read, select.POLLIN)
        milliseconds = None if timeout is None else math.ceil(timeout * 1000)
        if waiting.poll(milliseconds):
            try:
                while os.read(self._wake_read, 512):
                    pass
            except BlockingIOError:
                pass

    def _next_restart_in(self) -> Optional[float]:
        due = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _reap(self) -> None:
        """Collect workers that exited; schedule their restart unless stopping. Only the
        workers: a child process of the application's own stays the application's to
        wait for."""
        for slot in self.slots:
            if slot.pid is None:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = slot.pid, 0  # reaped by someone else: gone all the same
            if pid == 0:
                continue  # still running
            slot.pid = None
            if self._stop_requested:
                continue
            lived = time.monotonic() - slot.started_at
            self._schedule_restart(slot, lived, f"worker {slot.number} (pid {pid}) "
                                                f"{describe_status(status)} after {lived:.1f} s")

    def _schedule_restart(self, slot: WorkerSlot, lived: float, what_happened: str) -> None:
        """Start ``slot``'s worker again after its back-off, and log it."""
        if lived >= STABLE_SECONDS:
            slot.restart_delay = RESTART_DELAY_FIRST
        delay = slot.restart_delay
        slot.restart_delay = min(delay * 2, RESTART_DELAY_MAX)
        slot.restart_at = time.monotonic() + delay
        logger.warning("%s; restarting it in %.1f s", what_happened, delay)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self._stop_requested:
                slot.restart_at = None
                self._start(slot)

    # ---- workers ------------------------------------------------------------------

    def _start(self, slot: WorkerSlot) -> None:
        # Signals wait until the child has the worker's handlers: a stop signal landing
        # there would run the supervisor's handler in the worker, and the worker would
        # serve on, deaf to the stop. In the supervisor they wait until the pid is noted:
        # an exception of the application's handler in between would leave a worker
        # nobody stops or reaps.
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, ALL_SIGNALS)
            pid = slot.pid = os.fork()
            if pid == 0:
                self._become_worker()  # never returns
        except OSError as error:
            # For a moment (the process limit, memory): not a reason to take down the
            # workers that serve. Tried again as if the worker had died at once.
            slot.pid = None
            self._schedule_restart(slot, 0.0, f"worker {slot.number} could not be started "
                                              f"({error})")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)
        slot.started_at = time.monotonic()
        logger.info("worker %d started (pid %d)", slot.number, pid)

    def _become_worker(self) -> None:
        """In the forked child: serve, then exit (never return into the parent's code)."""
        status = 1
        try:
            # The supervisor's handlers and wake-up pipe are not the worker's: its loop
            # installs its own graceful-stop handlers where Python's defaults are.
            signal.set_wakeup_fd(-1)
            # Ctrl-C at a terminal signals the whole foreground process group: the
            # supervisor alone must get it, and stop each worker once (a second signal
            # would make a worker close without waiting). One that reached this process
            # before it left the group waits, blocked (see _start), even if ignored: SIG_IGN
            # once out of the group discards it, else it would raise KeyboardInterrupt
            # here once unblocked ("worker failed").
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)  # see _start
            # Forgotten as they are closed, so that nothing here writes to the numbers
            # once the worker's own descriptors take them (not _close_wake_pipe: its lock
            # may have been held by another thread at the fork).
            fd, self._wake_read = self._wake_read, -1; os.close(fd)  # noqa: E702
            fd, self._wake_write = self._wake_write, -1; os.close(fd)  # noqa: E702
            die_with_parent(self._supervisor_pid)
            self.serve_worker()
            status = 0
        except BaseException:
            logger.exception("worker failed")
        finally:
            # Nothing may take this process out of here into the supervisor's code (its
            # run()'s finally would kill the other workers, and the application's code
            # after run() would run in the worker too). Once the loop has given Ctrl-C
            # back, a signal handler's exception (KeyboardInterrupt) can come out of any
            # call: only those already on their way can still run once every signal is
            # blocked, and they run just after the blocking call, inside this try.
            try:
                signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
                # os._exit skips the interpreter's exit, which would flush these.
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except (AttributeError, OSError, ValueError):
                        pass
            finally:
                os._exit(status)

    def _signal_workers(self, signum: int) -> None:
        for pid in self.worker_pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _stop_workers(self) -> None:
        """SIGTERM every worker (each stops gracefully: stops accepting, sends what it
        queued, closes) and wait for them all, up to the grace period and a margin."""
        for slot in self.slots:
            slot.restart_at = None
        # No worker will accept any more: the port must refuse at once, as one process's
        # does when it stops (a balancer then marks it down and retries elsewhere). Kept
        # open, it would take connections into its backlog only to reset them at the end.
        # (A socket systemd passed stays open in systemd, for the next process.)
        self.listener.close()
        self._log_stop_signals()
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_period + STOP_MARGIN_SECONDS
        while self.worker_pids and time.monotonic() < deadline:
            self._wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self._log_stop_signals()
            self._reap()
        if self.worker_pids:
            logger.warning("workers %s did not stop within the grace period; killing them",
                           self.worker_pids)
        logger.info("all workers stopped")

    def _log_stop_signals(self) -> None:
        """Log the stop signals received since last asked (the handler cannot)."""
        while self._stop_signals:
            name = signal.Signals(self._stop_signals.pop(0)).name
            if self._stops_asked > 1 and not self._stop_signals:
                logger.warning("%s again: workers %s close without waiting", name,
                               self.worker_pids)
            else:
                logger.info("%s: stopping %d workers", name, len(self.worker_pids))

    def _kill_workers(self) -> None:
        if not self.worker_pids:
            return
        self._signal_workers(signal.SIGKILL)
        for slot in self.slots:
            if slot.pid is not None:
                try:
                    os.waitpid(slot.pid, 0)
                except ChildProcessError:
                    pass
                slot.pid = None


def describe_status(status: int) -> str:
    """What os.waitpid's ``status`` says about how a process ended."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = str(number)
        return f"was killed by {name}"
    return f"exited with status {os.WEXITSTATUS(status)}"


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (a supervisor
    killed with SIGKILL must not leave workers serving unsupervised)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before prctl took effect
