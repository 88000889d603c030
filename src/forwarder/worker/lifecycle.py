"""A task's life in the worker: one pipeline of small steps, and one end.

``run`` takes a delivery through, in order:

0. its id: one that cannot name a stored result (``/`` in it) is refused, copied to the
   dead-letter queue with the reason and acknowledged, before anything is stored or forwarded;
1. arrival: its wait in the queue is measured; extra positional arguments are ignored;
2. trace context: ``traceparent`` / ``tracestate`` from its kwargs or its message headers;
3. limits: ``ttl_seconds``, ``timeout_seconds``, ``submitted_at`` from its kwargs (a bad one fails
   the task); any other kwarg is ignored with a warning (``forwarder.worker.limits``);
4. admission: a result stored already, cancel marker, TTL and delivery count, then STARTED
   (``forwarder.worker.admission``);
5. interruption: the model call is abandoned past its deadline or once canceled
   (``forwarder.worker.cancel_watch``);
6. the model call: the payload POSTed to the model server (``forwarder.worker.forwarding``), a
   streamed reply recorded in the task's event log (``forwarder.worker.task_events``);
7. retry: a model server that cannot be reached gets the task again later
   (``forwarder.worker.retry``).

``finish`` is the one end of every final state. Celery stores SUCCESS and FAILURE itself and
calls ``finish`` from ``after_return``; a task the pipeline stops (EXPIRED, TIMEOUT, CANCELED, or
a dead-lettered FAILURE) reaches it from ``stop``, which then has Celery acknowledge the message
with ``Ignore`` (for which Celery calls no ``after_return`` and stores nothing over the state).
``finish`` records the finished task, stores the stopped state when there is one, and runs the
post-inference hooks in the same slot, once the result is stored. A stopped state is as final as
the other two: stored with the fields a FAILURE has (``exc_type``, ``exc_message``, ``custom``),
its message acknowledged, never retried and never delivered again.

A redelivery of a task an earlier delivery completed (its worker was lost after the store but
before the acknowledgement, or a producer published the message twice) never reaches ``finish``:
``skip_completed`` acknowledges it the same way, and the result and the hooks' calls stay those of
the first run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from celery.exceptions import Ignore, Reject

from forwarder.errors import ModelServerUnavailable, TaskStopped
from forwarder.events import EventWriter
from forwarder.hooks import HookRunner, TaskOutcome
from forwarder.observability.metrics import recorder
from forwarder.observability.tracing import model_call_span, pop_trace_context
from forwarder.protocol import MODEL_STATUS_ATTRIBUTE, SUCCESS, task_id_problem
from forwarder.worker.admission import Completed, admit
from forwarder.worker.cancel_watch import CancelWatch
from forwarder.worker.crash_loop import CrashLoopGuard
from forwarder.worker.limits import TaskLimits
from forwarder.worker.retry import RetryPolicy
from forwarder.worker.task_events import TaskEvents

__all__ = ["Outcome", "TaskLifecycle", "queue_wait_seconds"]

log = logging.getLogger(__name__)

# The model call: (payload, headers to send, the task's event writer) -> the reply to store.
ModelCall = Callable[[Any, Mapping[str, str], EventWriter | None], Any]


def queue_wait_seconds(arrival_timestamp: Any) -> float | None:
    """Seconds since model-engine's ``arrival_timestamp`` (a naive local time), if it parses.

    Celery's JSON decodes the datetime it encoded; another sender's may be an ISO string.
    """
    arrival = arrival_timestamp
    if isinstance(arrival, str):
        try:
            arrival = datetime.fromisoformat(arrival)
        except ValueError:
            return None
    if not isinstance(arrival, datetime):
        return None
    now = datetime.now(arrival.tzinfo) if arrival.tzinfo else datetime.now()
    return (now - arrival).total_seconds()


@dataclass(frozen=True)
class Outcome:
    """How a task ended: its final state, and its result (SUCCESS) or its error."""

    status: str
    value: Any
    stored: bool = True  # False: a state the pipeline stopped the task with, stored by finish

    @classmethod
    def stopped(cls, error: TaskStopped) -> Outcome:
        return cls(error.state, error, stored=False)


@dataclass(frozen=True)
class TaskLifecycle:
    """Every step of a task's life in the worker, and its one end (see the module's docstring)."""

    queue: str
    visibility_timeout: float  # a longer wait in the queue is counted as past it
    model_call: ModelCall
    crash_loop: CrashLoopGuard
    cancel_watch: CancelWatch
    retry: RetryPolicy
    hooks: HookRunner | None = None
    events: TaskEvents | None = None  # None: streamed replies are read, not recorded

    def run(
        self,
        task: Any,
        payload: Any,
        arrival_timestamp: Any,
        extra_args: tuple[Any, ...],
        extra: dict[str, Any],
    ) -> Any:
        """The task's body: the model's shaped reply, or an error Celery stores as FAILURE."""
        request = task.request
        problem = task_id_problem(request.id)
        if problem is not None:
            self.refuse(task, problem)
        if extra_args:
            log.warning(
                "task %s: ignoring %d extra positional argument(s)", request.id, len(extra_args)
            )
        wait = queue_wait_seconds(arrival_timestamp)
        recorder().task_received(
            self.queue, wait, wait is not None and wait > self.visibility_timeout
        )
        trace_headers = pop_trace_context(extra, request)
        limits = TaskLimits.pop_from(extra)
        if extra:
            log.warning("task %s: ignoring keyword argument(s) %s", request.id, sorted(extra))
        verdict = admit(task, limits, self.crash_loop)
        if isinstance(verdict, Completed):
            self.skip_completed(task, verdict.state)
        if verdict is not None:
            self.stop(task, verdict)
        return self._call_model(task, payload, limits, trace_headers)

    def _call_model(
        self, task: Any, payload: Any, limits: TaskLimits, trace_headers: dict[str, str]
    ) -> Any:
        metrics = recorder()
        task_id = task.request.id
        metrics.in_flight(self.queue, 1)
        writer = self.events.writer(task_id, task.backend) if self.events is not None else None
        started = time.perf_counter()
        try:
            with (
                self.cancel_watch.guard(task_id, limits),
                model_call_span(task_id, trace_headers) as headers,
            ):
                reply = self.model_call(payload, headers, writer)
        except TaskStopped as stopped:
            self.stop(task, stopped)
        except ModelServerUnavailable as error:
            if self.events is not None:
                self.events.discard(task_id)
            self.retry.send_back(task, error)
        finally:
            metrics.model_call(self.queue, time.perf_counter() - started)
            metrics.in_flight(self.queue, -1)
        status = reply.get("status_code") if isinstance(reply, dict) else None
        if isinstance(status, int):
            # Read by the log line of the finished task, so a 404 is not taken for a success.
            setattr(task.request, MODEL_STATUS_ATTRIBUTE, status)
        return reply

    def refuse(self, task: Any, problem: str) -> NoReturn:
        """Dead-letter a delivery nothing can be stored for, and acknowledge it; never lose it."""
        failed = self.crash_loop.send(task, 1, reason=problem)
        if failed:
            log.error("task refused: %s; %s: requeued", problem, failed)
            # Back on the queue rather than acknowledged with no copy anywhere.
            raise Reject(problem, requeue=True)
        log.error("task refused: %s; copied to %s", problem, self.crash_loop.dead_letter_queue)
        recorder().task_finished(self.queue, "refused")
        raise Ignore()

    def stop(self, task: Any, error: TaskStopped) -> NoReturn:
        """End the task with ``error``'s state, and have Celery acknowledge its message."""
        self.finish(task, Outcome.stopped(error))
        # Ignore: acknowledged, not retried, and nothing stored over the state just written.
        raise Ignore()

    def skip_completed(self, task: Any, state: str) -> NoReturn:
        """Acknowledge a redelivery of a completed task: no model call, no store, no hooks."""
        log.info(
            "task %s: already %s, redelivery acknowledged without running it again",
            task.request.id,
            state,
        )
        recorder().redelivery_skipped(self.queue, state.lower())
        raise Ignore()

    def finish(self, task: Any, outcome: Outcome) -> None:
        """The end of every final state: counted, stored if Celery has not, then the hooks."""
        request = task.request
        if not outcome.stored:
            task.backend.store_stopped(request.id, outcome.value, request)
            log.info("task %s %s: %s", request.id, outcome.status, outcome.value)
        recorder().task_finished(self.queue, outcome.status.lower())
        if self.events is not None:
            succeeded = outcome.status == SUCCESS
            error = None if succeeded else f"{type(outcome.value).__name__}: {outcome.value}"
            self.events.finish(request.id, outcome.status, error)
        if self.hooks:
            self.hooks.run(self._hook_outcome(request, outcome))

    def _hook_outcome(self, request: Any, outcome: Outcome) -> TaskOutcome:
        succeeded = outcome.status == SUCCESS
        value = outcome.value
        args = request.args
        return TaskOutcome(
            task_id=request.id,
            queue=self.queue,
            request=args[0] if args else None,
            succeeded=succeeded,
            result=value if succeeded else None,
            error=None if succeeded else f"{type(value).__name__}: {value}",
            status=outcome.status,
            trace_headers=pop_trace_context(dict(request.kwargs or {}), request),
        )
