"""Redis result backend (Celery's), with the ``custom`` error payload and one round trip a store.

Celery reads a task's result before each write, so that a duplicate delivery never overwrites a
SUCCESS, then writes and publishes it in a second round trip. Here the read, the check and the
write run as one Lua script: half the round trips of every store, and the check and the write can
no longer be split by another worker's write. A delivery's admission (cancel marker, delivery
count, expiring with the results), the check that the task is not completed already, and its
STARTED state are one script too. The scripts are in
``lua/``, beside this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from importlib import resources
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.exceptions import BackendStoreError

from forwarder.celery_ext.backends.base import Admission, ForwarderBackendMixin, StartingTask
from forwarder.protocol import COMPLETED_STATES

__all__ = ["RedisBackend"]

# For a backend told to keep results forever: a delivery count must not outlive every task.
DEFAULT_COUNT_SECONDS = 86400


def _script(*names: str) -> str:
    folder = resources.files("forwarder.celery_ext.backends") / "lua"
    return "\n".join((folder / f"{name}.lua").read_text() for name in names)


STORE = _script("store_unless_success", "store")
ADMIT = _script("store_unless_success", "admit")


class RedisBackend(ForwarderBackendMixin, CeleryRedisBackend):  # type: ignore[misc]
    """Celery's Redis backend: ``custom`` with every failure, each store in one round trip."""

    _scripts: dict[str, Any] | None = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # The scripts read the stored status with cjson: other serializers take Celery's path.
        if self.serializer != "json":
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        value = self.encoded_meta(task_id, result, state, traceback, request)
        self.ensure(self._run, ("store", [self.get_key_for_task(task_id)], [value, self._expiry]))
        return result

    def encoded_meta(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None
    ) -> Any:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        return value

    def _read_admission(
        self, task_id: str, retries: int, starting: StartingTask | None
    ) -> Admission:
        """One round trip: the stored state, the marker, the count and, if the task may start,
        STARTED."""
        started_meta = ""
        # With another serializer STARTED is stored afterwards, through Celery's path.
        if starting is not None and self.serializer == "json":
            started_meta = self.encoded_meta(
                task_id, starting.result, states.STARTED, request=starting.request
            )
        keys = [
            self.cancel_key(task_id),
            self.deliveries_key(task_id, retries),
            self.get_key_for_task(task_id),
        ]
        args = [
            math.ceil(self.expires or DEFAULT_COUNT_SECONDS),
            starting.max_deliveries if starting is not None else 0,
            started_meta,
            self._expiry,
            *sorted(COMPLETED_STATES),
        ]
        canceled, deliveries, started, completed = self._run("admit", keys, args)
        if isinstance(completed, bytes):
            completed = completed.decode()
        return Admission(bool(canceled), int(deliveries), bool(started), completed or None)

    def _set_if_unchanged(self, key: Any, expected: Any, value: Any) -> bool:
        # Compared and written in two steps: enough here, where admission reads the cancel marker
        # and stores STARTED in one script. Written as every store is (expiry, publish).
        if self.get(key) != expected:
            return False
        self.ensure(self._run, ("store", [key], [value, self._expiry]))
        return True

    def keys_with_prefix(self, prefix: str) -> Iterator[str]:
        """Every stored key starting with ``prefix`` (SCAN: it never blocks Redis)."""
        for key in self.client.scan_iter(match=f"{prefix}*", count=500):
            yield key.decode() if isinstance(key, bytes) else key

    @property
    def _expiry(self) -> int:
        return math.ceil(self.expires) if self.expires else 0

    def _run(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        if self._scripts is None:
            # register_script re-sends the script itself when Redis lost it (a restart).
            self._scripts = {
                "store": self.client.register_script(STORE),
                "admit": self.client.register_script(ADMIT),
            }
        return self._scripts[name](keys=keys, args=args)
