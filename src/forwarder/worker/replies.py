"""Reading a model server's reply body: as it arrives, bounded by ``worker.max_response_bytes``.

The reply is read in pieces and counted after decoding (a compressed reply is bounded by what it
expands to), so a reply past the bound costs at most the bound in memory, never the whole reply.
A ``Content-Length`` already past it fails the task before a byte of the body is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import urllib3

from forwarder.errors import ModelResponseTooLarge, ModelServerTimeout, ModelServerUnavailable

__all__ = ["READ_SIZE", "BoundedReader", "reading"]

READ_SIZE = 64 * 1024


@contextmanager
def reading(reply: Any, url: str, read_timeout: float) -> Iterator[None]:
    """Read ``reply`` in the body; it is released to the pool after, closed if the body raised.

    A half-read connection is never handed to the next task: on any error (an interrupt from a
    cancel or a deadline included) it is closed instead.
    """
    try:
        yield
    except urllib3.exceptions.ReadTimeoutError:
        reply.close()
        raise ModelServerTimeout(
            f"model server at {url} did not reply within {read_timeout:g} s"
        ) from None
    except urllib3.exceptions.HTTPError as exc:
        reply.close()
        raise ModelServerUnavailable(
            f"connection to model server at {url} broke during its reply: {exc}"
        ) from None
    except BaseException:
        reply.close()
        raise
    finally:
        reply.release_conn()


class BoundedReader:
    """Counts the bytes of one reply and fails its task past ``limit``."""

    def __init__(self, reply: Any, url: str, limit: int) -> None:
        self.reply = reply
        self.url = url
        self.limit = limit
        self.read_bytes = 0
        length = reply.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise self._too_large(f"announced {int(length)} bytes")

    def chunks(self) -> Iterator[bytes]:
        """The decoded body, piece by piece as it arrives."""
        for chunk in self.reply.stream(READ_SIZE, decode_content=True):
            self.read_bytes += len(chunk)
            if self.read_bytes > self.limit:
                raise self._too_large(f"more than {self.limit} bytes read")
            yield chunk

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def _too_large(self, seen: str) -> ModelResponseTooLarge:
        return ModelResponseTooLarge(
            f"model server at {self.url} replied with more than worker.max_response_bytes="
            f"{self.limit} ({seen}); the reply was not read further and the connection closed"
        )
