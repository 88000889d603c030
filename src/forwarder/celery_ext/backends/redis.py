"""Redis result backend (Celery's), with the ``custom`` error payload and one round trip a store.

Celery reads a task's result before each write, so that a duplicate delivery never overwrites a
SUCCESS, then writes and publishes it in a second round trip. Here the read, the check and the
write run as one Lua script: half the round trips of every store, and the check and the write can
no longer be split by another worker's write. A delivery's admission (cancel marker, delivery
count) and its STARTED state are one script too.
"""

from __future__ import annotations

import math
from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.exceptions import BackendStoreError

from forwarder.celery_ext.backends.base import ErrorPayloadMixin

__all__ = ["RedisBackend"]

# Stores a task's encoded meta (publishing it, as Celery does) unless a SUCCESS is stored already.
_STORE_UNLESS_SUCCESS = """
local function store_unless_success(key, value, expires)
    local current = redis.call('GET', key)
    if current then
        local ok, meta = pcall(cjson.decode, current)
        if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
            return 0
        end
    end
    if tonumber(expires) > 0 then
        redis.call('SET', key, value, 'EX', expires)
    else
        redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    return 1
end
"""

# KEYS: the result key. ARGV: the encoded meta, its expiry in seconds (0: none).
STORE = _STORE_UNLESS_SUCCESS + "return store_unless_success(KEYS[1], ARGV[1], ARGV[2])"

# A delivery's admission (see forwarder.worker.crash_loop): read the cancel marker, count the delivery,
# and store STARTED only if the task may start. KEYS: marker, count, result. ARGV: the count's
# expiry, the deliveries allowed, STARTED's encoded meta ('' when the task may not start: it
# expired), the result's expiry. Returns {canceled (0/1), deliveries, STARTED handled (0/1)}.
ADMIT = (
    _STORE_UNLESS_SUCCESS
    + """
local marker = redis.call('GET', KEYS[1])
local deliveries = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if marker or ARGV[3] == '' or deliveries > tonumber(ARGV[2]) then
    return {marker and 1 or 0, deliveries, 0}
end
store_unless_success(KEYS[3], ARGV[3], ARGV[4])
return {0, deliveries, 1}
"""
)


class RedisBackend(ErrorPayloadMixin, CeleryRedisBackend):  # type: ignore[misc]
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

    def admit(
        self,
        marker_key: Any,
        count_key: Any,
        count_seconds: int,
        max_deliveries: int,
        task_id: str,
        started_meta: Any,
    ) -> tuple[bool, int, bool]:
        """One round trip: (canceled, deliveries, STARTED handled); see ``ADMIT``."""
        if self.serializer != "json":
            started_meta = ""  # STARTED is then stored through Celery's path
        keys = [marker_key, count_key, self.get_key_for_task(task_id)]
        args = [count_seconds, max_deliveries, started_meta or "", self._expiry]
        canceled, deliveries, started = self._run("admit", keys, args)
        return bool(canceled), int(deliveries), bool(started)

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
