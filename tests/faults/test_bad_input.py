"""Generated bad payloads through a real worker: each ends SUCCESS or FAILURE, readably.

Hypothesis builds each payload (wrong types, huge strings, deep nesting, strings that are not
valid UTF-8 once encoded (lone surrogates), missing and extra fields, JSON that is not an
object); each is submitted to one running worker and waited for before the next. Then the
worker must still be up and a valid task must succeed.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.processes import Processes
from support.tally import Tally

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.slow]

EXAMPLES = 500
# The echo model server's control keys (a generated "delay" of 1e9 would only test patience).
ECHO_CONTROL_KEYS = {"delay", "status_code", "raw_text"}
MAX_ERROR_CHARS = 2000

keys = st.text(max_size=12).filter(lambda k: k not in ECHO_CONTROL_KEYS)
# Lone surrogates: a str that JSON can carry (as \udXXX escapes) but UTF-8 cannot encode.
bad_utf8 = st.builds(
    lambda a, s, b: a + s + b,
    st.text(max_size=5),
    st.sampled_from(["\udc80", "\ud800", "\udfff", "\udcff\udcfe"]),
    st.text(max_size=5),
)
huge = st.builds(
    lambda n, c: c * n, st.integers(10_000, 2_000_000), st.sampled_from("x\u00e9\U0001f600")
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    bad_utf8,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def nested(depth: int, leaf: Any, as_dict: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value} if as_dict else [value]
    return value


deep = st.builds(nested, st.integers(50, 800), scalars, st.booleans())
values = st.one_of(json_values, huge, deep, bad_utf8)
wrong_types = st.one_of(scalars, st.lists(scalars, max_size=3), bad_utf8)
fields = {
    "args": values,
    "url": wrong_types,
    "callback_url": st.one_of(
        wrong_types,
        st.sampled_from(
            ["ftp://127.0.0.1/x", "file:///etc/passwd", "javascript:alert(1)", "http://"]
        ),
    ),
    "callback_auth": st.one_of(
        wrong_types,
        st.fixed_dictionaries(
            {"kind": st.one_of(st.sampled_from(["basic", "mtls", "x"]), scalars)}
        ),
    ),
    "cloudpickle": wrong_types,
    "return_pickled": wrong_types,
    "destination_path": wrong_types,
}
objects = st.fixed_dictionaries({}, optional={**fields, **{f"extra_{n}": values for n in range(3)}})
payloads = st.one_of(
    objects,  # missing fields (possibly all), wrong types, extra fields
    st.dictionaries(keys, values, max_size=5),
    values,  # not an object at all
)


@pytest.mark.timeout(170)
def test_generated_bad_payloads_each_end_readably_and_the_worker_stays_up(
    procs: Processes, redis_url: str
) -> None:
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, pool="prefork", broker_url=redis_url, queue="bad", concurrency=2
    )
    client = procs.client(broker_url=redis_url, queue="bad")
    tally = Tally(f"bad input: {EXAMPLES} generated payloads (prefork c=2)")
    errors: dict[str, int] = {}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(payloads)
    def one(payload: Any) -> None:
        task_id = client.submit(payload)
        tally.submitted.append(task_id)
        result = client.wait(task_id, timeout=20, poll=0.005)
        assert result.status in ("SUCCESS", "FAILURE"), (result.status, repr(payload)[:300])
        if result.status == "FAILURE":
            error = result.error
            assert isinstance(error, str) and error.strip(), result
            assert len(error) <= MAX_ERROR_CHARS, error[:300] + "..."
            first = error.splitlines()[0][:60]
            errors[first] = errors.get(first, 0) + 1
        assert worker.running, worker.log()[-3000:]

    one()
    valid = client.submit({"args": {"still": "up"}})
    tally.submitted.append(valid)
    result = client.wait(valid, timeout=20)
    assert (result.status, result.result) == (
        "SUCCESS",
        {"result": json.dumps({"still": "up"}), "status_code": 200},
    )
    tally.wait(redis_url, timeout=10)
    tally.model_calls = echo.stats()["predict_requests"]
    tally.report()
    print("  failure messages (first line, count):", errors)
    assert len(tally.submitted) >= EXAMPLES + 1
    assert tally.lost == [], tally.line()
    assert worker.running


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_a_payload_too_deep_to_pickle_fails_alone(
    pool: str, procs: Processes, redis_url: str
) -> None:
    """Found by the generated run: this stopped a prefork worker (RecursionError in pickle)."""
    echo = procs.echo()
    worker = procs.worker(
        model_port=echo.port, pool=pool, broker_url=redis_url, queue="deep", concurrency=2
    )
    client = procs.client(broker_url=redis_url, queue="deep")
    # More of them than the worker has slots: each must give its slot back.
    deep_ids = [client.submit({"args": nested(800, n, as_dict=True)}) for n in range(5)]
    results = [client.wait(deep_id, timeout=20) for deep_id in deep_ids]
    result = results[-1]
    assert len({r.status for r in results}) == 1, results
    if pool == "prefork":
        assert result.status == "FAILURE", result
        assert result.error is not None and "nested too deeply" in result.error, result.error
    else:  # no pickling between processes: it is simply forwarded
        assert result.status == "SUCCESS", result
    after = client.wait(client.submit({"args": {"next": 1}}), timeout=20)
    assert (after.status, after.result) == (
        "SUCCESS",
        {"result": '{"next": 1}', "status_code": 200},
    )
    assert worker.running, worker.log()[-3000:]
    # Nothing half-sent is left in the pool's books to hold a warm shutdown up.
    assert worker.stop(signal.SIGTERM, timeout=20) == 0
