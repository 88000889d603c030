"""kombu's SQS transport, taking nothing once the worker is shutting down (``stopping``)."""

from __future__ import annotations

from kombu.transport import SQS

from forwarder.celery_ext.stopping import StopsTaking

__all__ = ["Transport"]


class Channel(StopsTaking, SQS.Channel):
    pass


class Transport(SQS.Transport):
    Channel = Channel
