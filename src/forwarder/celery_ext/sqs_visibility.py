"""SQS: keep the messages a worker holds invisible for as long as it holds them.

kombu receives from predefined queues without a visibility timeout of its own, so the queue's
attribute applies; a task still running when it passes becomes visible again, and another slot or
worker runs it a second time (measured: 3 tasks of 5 s on a 2 s queue made 7 model calls). A
consumer step here renews the visibility of every message the worker holds (Celery's records of
the tasks waiting for a slot, running, or waiting for their countdown), every half timeout, by the
queue's own timeout: a message whose worker dies still comes back after at most one timeout.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

__all__ = ["KeepVisible"]

log = logging.getLogger(__name__)

BATCH = 10  # ChangeMessageVisibilityBatch takes at most 10 entries


class KeepVisible(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery is untyped
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_ref: Any = None
        self.timeouts: dict[str, int] = {}

    def start(self, consumer: Any) -> None:
        channel = consumer.task_consumer.channel
        queues = getattr(channel, "predefined_queues", None) or {}
        self.timeouts = {
            options["url"]: self._queue_timeout(channel, name, options)
            for name, options in queues.items()
        }
        if not self.timeouts:
            return
        interval = max(1.0, min(self.timeouts.values()) / 2)
        self.timer_ref = consumer.timer.call_repeatedly(interval, self.renew, (channel,))
        log.info("renewing the visibility of held SQS messages every %g s", interval)

    def stop(self, consumer: Any) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def _held(self) -> dict[str, list[str]]:
        """The receipt handle of every message the worker holds, by queue URL, each once."""
        held: dict[str, dict[str, None]] = defaultdict(dict)
        # Waiting for a slot, running, or waiting for its countdown: Celery's own records of
        # them, whose kombu messages carry the SQS receipt.
        requests = [
            *worker_state.reserved_requests,
            *worker_state.active_requests,
            *worker_state.scheduled_requests,
        ]
        for request in requests:
            info = getattr(request.message, "delivery_info", None) or {}
            receipt = (info.get("sqs_message") or {}).get("ReceiptHandle")
            url = info.get("sqs_queue")
            if receipt and url in self.timeouts:
                held[url][receipt] = None
        return {url: list(receipts) for url, receipts in held.items()}

    @staticmethod
    def _queue_timeout(channel: Any, name: str, options: dict[str, Any]) -> int:
        try:
            reply = channel.sqs(queue=name).get_queue_attributes(
                QueueUrl=options["url"], AttributeNames=["VisibilityTimeout"]
            )
            return int(reply["Attributes"]["VisibilityTimeout"])
        except Exception as exc:
            # The configured one is what the queue should have: the best guess left.
            log.warning("cannot read the visibility timeout of SQS queue %s: %s", name, exc)
            return int(options.get("visibility_timeout") or 30)

    def renew(self, channel: Any) -> None:
        for url, receipts in self._held().items():
            for start in range(0, len(receipts), BATCH):
                entries = [
                    {
                        "Id": str(i),
                        "ReceiptHandle": receipt,
                        "VisibilityTimeout": self.timeouts[url],
                    }
                    for i, receipt in enumerate(receipts[start : start + BATCH])
                ]
                try:
                    channel.sqs().change_message_visibility_batch(QueueUrl=url, Entries=entries)
                except Exception as exc:
                    # Next round tries again; meanwhile the messages may become visible.
                    log.warning("renewing SQS visibility on %s failed: %s", url, exc)
