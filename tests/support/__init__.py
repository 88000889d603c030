"""The tests' own library: real processes on 127.0.0.1, bounded waits, the fault suite's counts.

pytest loads it as a plugin (``-p support.plugin`` in pyproject.toml, with ``tests`` on the path),
which registers the shared fixtures (``procs``, ``redis_url``, ``moto``, ``callback_receiver``,
...); test modules import the helpers by name, e.g. ``from support.waiting import wait_one``.
Every wait is bounded in time, and every process a test starts is stopped after it.
"""
