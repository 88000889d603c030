"""Standard Webhooks signatures for the callback: ``webhook-id``, ``-timestamp``, ``-signature``.

The id stays the same across the attempts of one task, so that a receiver can drop duplicates;
the timestamp is that of each attempt, so that a receiver's replay window holds for late tries.
With several keys (a rotation) the signature header carries one ``v1,`` signature per key,
space-separated, as Standard Webhooks allows: a receiver that knows either key accepts the call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from forwarder.errors import ConfigError

__all__ = ["SECRET_PREFIX", "callback_headers", "sign", "signature_headers", "signing_key"]

SECRET_PREFIX = "whsec_"


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after ``whsec_``, else the text's bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        key = b""
    if not key:
        raise ConfigError(
            "callback.signing_secret",
            "(not shown)",
            f"{SECRET_PREFIX} followed by base64, or any text not starting with {SECRET_PREFIX}",
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of id.timestamp.body."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(keys: bytes | Sequence[bytes], task_id: str, body: bytes) -> dict[str, str]:
    """The three headers of one attempt to deliver ``task_id``'s ``body``, signed now."""
    message_id = f"msg_{task_id}"
    timestamp = int(time.time())
    every = [keys] if isinstance(keys, bytes) else list(keys)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(key, message_id, timestamp, body) for key in every),
    }


def callback_headers(
    keys: Sequence[bytes], task_id: str, body: bytes, trace_headers: Mapping[str, str]
) -> dict[str, str]:
    """A callback's headers: JSON, the trace context, and one signature per key (none without)."""
    headers = {"Content-Type": "application/json", **trace_headers}
    if keys:
        headers.update(signature_headers(keys, task_id, body))
    return headers
