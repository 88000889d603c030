"""Callbacks as durable deliveries: out of the inference slot, retried for hours, state visible.

``enqueue`` (the worker's side: state ``pending``, a job on ``<queue>-callbacks``), ``deliverer``
(the process that consumes the jobs on its own slots), ``runner`` (one attempt, then delivered, a
retry with a countdown, or failed and parked), ``sender`` (the signed HTTP attempt), ``state``
(the record beside the result), ``control`` (list and redeliver), ``broker`` (the jobs' app and
queues), ``jobs`` and ``bodies``. docs/reliability.md has the design and its figures.
"""
