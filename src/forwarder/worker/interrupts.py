"""Interrupting a task's model call from outside it: at its deadline, or when a client cancels it.

The model call blocks in a socket read, and it must end there, not at the next per-read timeout.
Celery's own time limits do not fit: the gevent pool has only a hard limit (which stores FAILURE),
prefork's soft limit raises anywhere in the task, hooks and result storage included, and its hard
limit kills the child (whose task is then delivered again). Here each pool gets the interruption
its tasks can take, and both raise ``Interrupt`` only while the model call is *armed*:

- prefork: a task runs in its child's main thread. The deadline is an ``ITIMER_REAL`` timer, and
  a cancel is ``pthread_kill(main thread, SIGALRM)`` from the watcher thread. Either way SIGALRM
  reaches the main thread, its blocking read fails with EINTR, and the handler raises there.
  SIGALRM, because neither billiard nor Celery uses it in a pool child (they take SIGUSR1 for
  soft time limits and SIGTERM, SIGINT, SIGQUIT, SIGHUP for shutdown) and because the timer can
  send no other signal; the watcher thread blocks it, so the timer's signal always lands in the
  main thread. The handler is installed at the first armed call and kept for the life of the
  process: restored after each call, a cancel sent just as the call ends would meet SIGALRM's
  default action, which kills the child. Unarmed, the handler passes the signal on to the
  handler it replaced, when that was a function.
- gevent: a task is a greenlet. The deadline is a hub timer and a cancel a hub callback; either
  throws ``Interrupt`` into the task's greenlet, which is waiting on its socket (the hub runs only
  while every greenlet waits).

``Interrupt`` derives from BaseException, like ``gevent.Timeout``: urllib3 and requests wrap the
OSError family into errors that the forwarder reads as a lost connection (and retries), while a
BaseException passes through them unchanged, and urllib3 closes the connection on its way out:
the abandoned call's socket is dropped, never handed to the next task.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from forwarder.errors import TaskDeadlineExceeded, TaskStopped

__all__ = [
    "Call",
    "GreenletInterrupter",
    "Interrupt",
    "Interrupter",
    "SignalInterrupter",
    "interrupter_for",
]


class Interrupt(BaseException):
    """Raised inside an armed model call; ``reason`` is the error the task ends with."""

    def __init__(self, reason: type[TaskStopped]) -> None:
        # The class itself as the argument: pickle rebuilds the exception as Interrupt(reason),
        # as a prefork child's exception is rebuilt in the worker process.
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason.__name__


@dataclass(eq=False)
class Call:
    """One armed model call: whom to interrupt, and why once it is."""

    task_id: str
    target: Any  # the thread ident (prefork) or greenlet (gevent) running the call
    deadline: float | None  # time.monotonic() at which it times out
    reason: type[TaskStopped] | None = None  # set once, by whoever interrupts first
    armed: bool = True
    raised: bool = False
    timer: Any = None  # what undoes the deadline at disarm


class Interrupter(Protocol):
    def arm(self, task_id: str, timeout: float | None) -> Call: ...

    def disarm(self, call: Call) -> None: ...

    def interrupt(self, call: Call, reason: type[TaskStopped]) -> None:
        """Called from the watcher: end ``call`` with ``reason`` if it is still armed."""

    def prepare_watcher(self) -> None:
        """Called once in the watcher's own thread or greenlet, before it starts watching."""


class SignalInterrupter:
    """prefork: SIGALRM to the child's main thread, from a timer or from the watcher thread."""

    signum = signal.SIGALRM

    def __init__(self) -> None:
        self._current: Call | None = None
        self._previous: Any = None
        self._installed = False

    def arm(self, task_id: str, timeout: float | None) -> Call:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the prefork interrupter runs model calls in the main thread only")
        if not self._installed:
            self._previous = signal.signal(self.signum, self._on_signal)
            self._installed = True
        now = time.monotonic()
        call = Call(task_id, threading.get_ident(), None if timeout is None else now + timeout)
        self._current = call
        if timeout is not None:
            # Measured before the timer is set, so the timer never fires before the deadline.
            call.timer = (now, signal.setitimer(signal.ITIMER_REAL, timeout)[0])
        return call

    def disarm(self, call: Call) -> None:
        # First: from here on a late signal finds no armed call and raises nothing.
        self._current = None
        call.armed = False
        if call.timer is not None:
            armed_at, replaced = call.timer
            # Resumes what was left of a timer someone else had set (none in a pool child).
            left = max(replaced - (time.monotonic() - armed_at), 1e-6) if replaced else 0.0
            signal.setitimer(signal.ITIMER_REAL, left)

    def interrupt(self, call: Call, reason: type[TaskStopped]) -> None:
        if call.armed and call.reason is None:
            call.reason = reason
            # A call that ends between the check and the signal is harmless: the handler finds
            # another call armed (with no reason) or none, and lets the signal go.
            signal.pthread_kill(call.target, self.signum)

    def prepare_watcher(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {self.signum})

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        call = self._current
        if call is None:
            if callable(self._previous):
                self._previous(signum, frame)
            return
        if call.raised:
            # Once: a second raise would cut short urllib3 dropping the connection.
            return
        if call.reason is None and call.deadline is not None and time.monotonic() >= call.deadline:
            call.reason = TaskDeadlineExceeded
        if call.reason is not None:
            call.raised = True
            raise Interrupt(call.reason)


class GreenletInterrupter:
    """gevent: ``greenlet.throw`` from the hub, at a timer or at the watcher's request."""

    def __init__(self) -> None:
        import gevent

        self._gevent = gevent

    def arm(self, task_id: str, timeout: float | None) -> Call:
        deadline = None if timeout is None else time.monotonic() + timeout
        call = Call(task_id, self._gevent.getcurrent(), deadline)
        if timeout is not None:
            loop = self._gevent.get_hub().loop
            # The loop's clock stands where it last iterated: a greenlet that ran a while since
            # (a first call's imports, a slow store) would get a timer short by that much.
            loop.update_now()
            call.timer = loop.timer(timeout, 0)
            call.timer.start(self._throw, call, TaskDeadlineExceeded)
        return call

    def disarm(self, call: Call) -> None:
        call.armed = False
        if call.timer is not None:
            call.timer.close()

    def interrupt(self, call: Call, reason: type[TaskStopped]) -> None:
        # From the hub, not from the watcher's greenlet: a greenlet thrown into from there would
        # switch back to the hub when it next waits, and the watcher would never run again.
        self._gevent.get_hub().loop.run_callback(self._throw, call, reason)

    def prepare_watcher(self) -> None:
        pass

    @staticmethod
    def _throw(call: Call, reason: type[TaskStopped]) -> None:
        # Runs in the hub: the task's greenlet is waiting, and if still armed, in its model call.
        if call.armed and call.reason is None:
            call.reason = reason
            call.target.throw(Interrupt(reason))


def interrupter_for(pool: str) -> Interrupter:
    return GreenletInterrupter() if pool == "gevent" else SignalInterrupter()
