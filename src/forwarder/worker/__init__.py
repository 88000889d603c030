"""The worker: the Celery app and task, a task's lifecycle, the model call, the gevent switch.

Imports nothing here: ``forwarder.worker.gevent_switch`` must load before celery or requests.
"""
