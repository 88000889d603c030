"""What a hook is, what it is given, and the runner that keeps one hook's failure from the rest.

Hooks run after a task has reached its final state and its result is stored, like middleware:
each in turn, each isolated. A hook that raises is logged and counted; it never changes the
task's result, never fails the task and never stops the hooks after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from forwarder.observability.metrics import recorder

__all__ = ["Hook", "HookCounts", "HookRunner", "TaskOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskOutcome:
    """A finished task: its request, its final state, and either its stored result or its error."""

    task_id: str
    queue: str | None
    request: Any  # the payload as it came in the message (usually a JSON object)
    succeeded: bool
    result: Any = None  # the stored result on success
    error: str | None = None  # "ExcType: message" otherwise
    # SUCCESS, FAILURE, EXPIRED, TIMEOUT or CANCELED; left out, SUCCESS or FAILURE by `succeeded`.
    status: str = ""
    # W3C traceparent / tracestate of the task, passed on to whoever the hook calls.
    trace_headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "SUCCESS" if self.succeeded else "FAILURE")

    @property
    def request_fields(self) -> Mapping[str, Any]:
        """The request as a mapping; empty when the payload was not a JSON object."""
        return self.request if isinstance(self.request, Mapping) else {}

    def response_body(self) -> dict[str, Any]:
        """What the callback and the log record carry: model-engine's result plus ``task_id``.

        On success ``{"result": ..., "status_code": ..., "task_id": ...}``; otherwise
        ``{"task_id": ..., "status": <final state>, "error": ...}``.
        """
        if self.succeeded:
            body = (
                dict(self.result) if isinstance(self.result, Mapping) else {"result": self.result}
            )
            body["task_id"] = self.task_id
            return body
        return {"task_id": self.task_id, "status": self.status, "error": self.error}


class Hook:
    """Base of every hook: ``__call__`` for each finished task, ``close`` at process exit."""

    name: ClassVar[str]

    def __call__(self, outcome: TaskOutcome) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release what the hook holds; called once when the process stops."""


@dataclass
class HookCounts:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    seconds: float = 0.0  # time spent in the hook, successes and failures alike


class HookRunner:
    """Runs every hook on every outcome, isolated and counted (per process)."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self.hooks = tuple(hooks)
        self.counts = {hook.name: HookCounts() for hook in self.hooks}

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def run(self, outcome: TaskOutcome) -> None:
        for hook in self.hooks:
            counts = self.counts[hook.name]
            counts.attempts += 1
            started = time.perf_counter()
            ok = False
            try:
                hook(outcome)
            except Exception as exc:
                counts.failures += 1
                log.warning(
                    "hook %s failed for task %s (%d failure(s) so far): %s: %s",
                    hook.name,
                    outcome.task_id,
                    counts.failures,
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
            else:
                counts.successes += 1
                ok = True
            finally:
                seconds = time.perf_counter() - started
                counts.seconds += seconds
                recorder().hook_finished(hook.name, ok, seconds)

    def close(self) -> None:
        for hook in self.hooks:
            try:
                hook.close()
            except Exception:
                log.exception("hook %s failed to close", hook.name)
        if self.hooks:
            log.info(
                "hooks: %s",
                ", ".join(
                    f"{name} attempts={c.attempts} successes={c.successes} "
                    f"failures={c.failures} seconds={c.seconds:.3f}"
                    for name, c in self.counts.items()
                ),
            )
