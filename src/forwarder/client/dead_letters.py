"""Reading and replaying the dead-letter queue, for ``forwarder dead-letter list | replay``.

The queue holds kombu messages whose body is a ``DeadLetter`` (JSON). Listing never consumes: on
Redis it reads the queue's list (LRANGE), on the embedded broker its message files. A replay
first takes the message off the queue (LREM, or renaming the file), so two replays cannot both
send it; if the send fails the message is put back. Bodies are decoded as JSON only.

On SQS the worker sends dead letters to the queue of that name beside the work queue, but SQS
has no read that leaves messages in place, so listing and replaying there is not done here.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
from kombu.serialization import loads

from forwarder.celery_ext.brokers import broker_config
from forwarder.config.settings import Settings
from forwarder.errors import ConfigError
from forwarder.worker.crash_loop import DeadLetter

__all__ = ["Entry", "envelope_body", "open_dead_letters", "open_queue_store", "replay"]


@dataclass(frozen=True)
class Entry:
    """One message on the dead-letter queue: its raw form identifies it to ``take``."""

    raw: Any
    letter: DeadLetter | None  # None: not a dead letter (shown, never replayed)
    problem: str = ""


def envelope_body(envelope_text: bytes | str) -> Any:
    """The JSON body in kombu's virtual-transport envelope; nothing else is deserialised."""
    envelope = json.loads(envelope_text)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return loads(  # type: ignore[no-untyped-call]  # kombu is untyped
        body,
        envelope["content-type"],
        envelope["content-encoding"],
        accept={"application/json"},
    )


def decode(envelope_text: bytes | str, raw: Any) -> Entry:
    try:
        return Entry(raw, DeadLetter.from_body(envelope_body(envelope_text)))
    except Exception as exc:
        return Entry(raw, None, f"{type(exc).__name__}: {exc}")


class RedisDeadLetters:
    """kombu keeps a queue as a Redis list named after it, pushed left and popped right."""

    def __init__(self, url: str, queue: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.queue = queue

    def entries(self) -> Iterator[Entry]:
        for raw in reversed(self.client.lrange(self.queue, 0, -1)):  # oldest first
            yield decode(raw, raw)

    def text_of(self, entry: Entry) -> Any:
        return entry.raw

    def take(self, entry: Entry) -> bool:
        return int(self.client.lrem(self.queue, 1, entry.raw)) == 1

    def put_back(self, entry: Entry) -> None:
        self.client.rpush(self.queue, entry.raw)

    def done(self, entry: Entry) -> None:
        pass

    def close(self) -> None:
        self.client.close()


class FolderDeadLetters:
    """kombu's filesystem transport: one ``<stamp>_<id>.<queue>.msg`` file per message."""

    def __init__(self, folder: Path, queue: str) -> None:
        self.folder = folder
        self.suffix = f".{queue}.msg"

    def entries(self) -> Iterator[Entry]:
        names = sorted(
            name for name in os.listdir(self.folder) if name.partition(".")[2] == self.suffix[1:]
        )
        for name in names:
            try:
                text = (self.folder / name).read_bytes()
            except FileNotFoundError:  # consumed or replayed meanwhile
                continue
            yield decode(text, name)

    def text_of(self, entry: Entry) -> bytes:
        return (self.folder / str(entry.raw)).read_bytes()

    def take(self, entry: Entry) -> bool:
        # A rename is atomic: only one replay (or consumer) gets the file.
        try:
            os.rename(self.folder / entry.raw, self._taken(entry))
        except FileNotFoundError:
            return False
        return True

    def put_back(self, entry: Entry) -> None:
        os.rename(self._taken(entry), self.folder / entry.raw)

    def done(self, entry: Entry) -> None:
        os.remove(self._taken(entry))

    def _taken(self, entry: Entry) -> Path:
        # No longer named like a message of any queue.
        return self.folder / f"{entry.raw}.replaying"

    def close(self) -> None:
        pass


def open_dead_letters(settings: Settings) -> RedisDeadLetters | FolderDeadLetters:
    return open_queue_store(settings, settings.worker.dead_letter_queue_name)


def open_queue_store(settings: Settings, queue: str) -> RedisDeadLetters | FolderDeadLetters:
    """The messages of ``queue``, read in place and taken one by one (Redis or embedded)."""
    worker = settings.worker
    config = broker_config(worker)
    if config.kind == "redis":
        return RedisDeadLetters(config.broker_url, queue)
    if config.kind == "embedded":
        return FolderDeadLetters(Path(config.transport_options["data_folder_in"]), queue)
    raise ConfigError(
        "--sqs-url", worker.sqs_url, "a Redis or embedded broker (read SQS with the AWS console)"
    )


def replay(
    app: Celery, store: RedisDeadLetters | FolderDeadLetters, task_ids: set[str] | None
) -> list[DeadLetter]:
    """Send the dead letters (``None``: all of them) back to their queues; returns those sent.

    Each is sent under its own task id, as a first delivery (``retries`` 0), its counts deleted
    and its stored FAILURE forgotten, so a client waiting on it sees it PENDING again.
    """
    sent: list[DeadLetter] = []
    backend = app.backend
    for entry in list(store.entries()):
        letter = entry.letter
        if letter is None or (task_ids is not None and letter.task_id not in task_ids):
            continue
        if not store.take(entry):
            continue
        try:
            for retries in {0, letter.retries}:
                backend.delete(backend.deliveries_key(letter.task_id, retries))
            backend.forget(letter.task_id)
            app.send_task(
                letter.task,
                args=letter.args,
                kwargs=letter.kwargs,
                task_id=letter.task_id,
                queue=letter.queue,
                headers=letter.trace or None,
            )
        except BaseException:
            store.put_back(entry)
            raise
        store.done(entry)
        sent.append(letter)
    return sent
