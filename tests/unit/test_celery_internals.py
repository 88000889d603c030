"""The private names of Celery, kombu and billiard that celery_ext uses still exist as used.

Each entry of ``forwarder.celery_ext.internals.INTERNALS`` is checked against the installed
versions, so an upgrade that renames or reshapes one fails here, naming it and what uses it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from forwarder.celery_ext.internals import INTERNALS, Internal, problem


@pytest.fixture(scope="module")
def billiard_pool() -> Iterator[Any]:
    """A real billiard pool of one process: its private attributes are set in ``__init__``."""
    from billiard.pool import Pool

    pool = Pool(processes=1)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def instance_of(owner: type, billiard_pool: Any) -> Any:
    """A real instance of ``owner``, for the names its ``__init__`` sets."""
    from billiard.pool import ApplyResult
    from kombu.transport import redis, virtual

    if owner is ApplyResult:  # a job, recorded in a cache of its own
        return ApplyResult({}, callback=None)
    if isinstance(billiard_pool, owner):
        return billiard_pool
    if isinstance(billiard_pool._inqueue, owner):  # the pool's job pipe (a SimpleQueue)
        return billiard_pool._inqueue
    if owner is virtual.QoS:
        return virtual.QoS(channel=SimpleNamespace(do_restore=False))
    if owner is redis.MultiChannelPoller:
        return redis.MultiChannelPoller()
    return None


@pytest.mark.parametrize("internal", INTERNALS, ids=[i.label for i in INTERNALS])
def test_each_private_name_is_still_there_as_used(internal: Internal, billiard_pool: Any) -> None:
    instance = None
    if internal.on_instance:
        instance = instance_of(internal.owner_class(), billiard_pool)
        assert isinstance(instance, internal.owner_class()), internal.label
    assert problem(internal, instance) is None


def test_every_entry_names_its_use() -> None:
    assert len({i.label for i in INTERNALS}) == len(INTERNALS)
    assert all(i.name.startswith("_") and i.why for i in INTERNALS)


def test_a_renamed_or_reshaped_name_is_reported_by_name() -> None:
    entry = next(i for i in INTERNALS if i.name == "_event_process_exit")
    renamed = replace(entry, name="_event_process_gone")
    assert problem(renamed) == (
        "celery.concurrency.asynpool:AsynPool._event_process_gone is gone; it was used for: "
        f"{entry.why}"
    )
    reshaped = replace(entry, parameters=("self", "hub"))
    message = problem(reshaped)
    assert message is not None
    assert message.startswith(
        "celery.concurrency.asynpool:AsynPool._event_process_exit now takes "
        "('self', 'hub', 'proc'), not ('self', 'hub')"
    )
