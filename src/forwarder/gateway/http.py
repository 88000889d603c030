"""The gateway's HTTP edges: body limits and content type before routing, and bearer tokens.

No ``from __future__ import annotations``: FastAPI reads the dependency annotations at run time,
and one names a local variable.
"""

import hmac
from base64 import b64decode
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimits", "authorizer"]


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class BodyLimits:
    """413 past ``max_body_bytes`` (declared or streamed), 415 for a body that is not JSON, 422
    for one that is not UTF-8.

    The body is read here, bounded, and handed on whole, so the app never buffers more.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.too_large = JSONResponse(
            {
                "detail": f"request body larger than {max_body_bytes} bytes "
                "(the gateway's max_body_bytes)"
            },
            status_code=413,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self.too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self.too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        content_type = headers.get("content-type")
        if size and not _is_json(content_type):
            shown = (content_type or "none")[:100]
            detail = f"Content-Type must be application/json, not {shown}"
            await JSONResponse({"detail": detail}, status_code=415)(scope, receive, send)
            return
        body = b"".join(chunks)
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            # JSON is UTF-8 (RFC 8259); FastAPI would answer such a body with a bare 400.
            error = {"loc": ["body", exc.start], "msg": "not UTF-8", "type": "json_invalid"}
            await JSONResponse({"detail": [error]}, status_code=422)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def authorizer(tokens: tuple[str, ...]) -> Callable[..., str]:
    """A dependency returning the caller's token; 401 unless it is one of ``tokens``.

    Bearer tokens; also HTTP Basic with the token as the user name, which is how model-engine's
    clients send their API key.
    """
    bearer = HTTPBearer(auto_error=False, description="one of the gateway's auth_tokens")
    accepted = [token.encode() for token in tokens]

    def authorize(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        presented = credentials.credentials if credentials else _basic_user(request)
        if presented is not None:
            given = presented.encode(errors="replace")
            # Every token compared, in constant time each: the time says nothing of which matched.
            matches = [hmac.compare_digest(given, token) for token in accepted]
            if any(matches):
                return presented
        raise HTTPException(
            status_code=401,
            detail="missing or unknown token: send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )

    return authorize


def _basic_user(request: Request) -> str | None:
    scheme, _, param = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return b64decode(param.strip(), validate=True).decode().partition(":")[0]
    except ValueError:
        return None
