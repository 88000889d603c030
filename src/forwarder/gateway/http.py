"""The gateway's HTTP edges, before routing: bearer tokens, then body limits and content type.

The token is checked before a byte of the body is read, so a caller without one costs the
gateway its headers only. No ``from __future__ import annotations``: FastAPI reads the
dependency annotations at run time, and one names a local variable.
"""

import hmac
from base64 import b64decode
from collections.abc import Callable, Collection
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forwarder.gateway.owners import ANONYMOUS, principal_of

__all__ = ["PRINCIPAL_SCOPE_KEY", "Authentication", "BodyLimits", "principal_dependency"]

# Where ``Authentication`` leaves the caller's principal in the request's scope.
PRINCIPAL_SCOPE_KEY = "forwarder.principal"


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class BodyLimits:
    """413 past ``max_body_bytes`` (declared or streamed), 415 for a body that is not JSON, 422
    for one that is not UTF-8.

    The body is read here, bounded in size and in time (408 past ``timeout_seconds``), and handed
    on whole, so the app never buffers more.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.timeout_seconds = timeout_seconds
        self.too_slow = JSONResponse(
            {"detail": f"request body not received within {timeout_seconds:g} s"},
            status_code=408,
            headers={"Connection": "close"},
        )
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
        with anyio.move_on_after(self.timeout_seconds) as deadline:
            read = await self._read(receive, chunks)
        if deadline.cancelled_caught:
            await self.too_slow(scope, receive, send)
            return
        if read is None:
            return
        if read > self.max_body_bytes:
            await self.too_large(scope, receive, send)
            return
        await self._forward(scope, receive, send, headers, chunks, read)

    async def _read(self, receive: Receive, chunks: list[bytes]) -> int | None:
        """The body's size once read into ``chunks``, stopping past the limit; None: gone."""
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return size
            chunks.append(chunk)
            more = message.get("more_body", False)
        return size

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: Headers,
        chunks: list[bytes],
        size: int,
    ) -> None:
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


class Authentication:
    """401 for a request without one of ``tokens``, unless its path is in ``public_paths``;
    the body is not read. The caller's principal goes into the scope (``PRINCIPAL_SCOPE_KEY``).

    Bearer tokens; also HTTP Basic with the token as the user name, which is how model-engine's
    clients send their API key. Without tokens every caller is ``anonymous``. Every path not
    public needs a token, so a route added later is guarded without asking.
    """

    def __init__(self, app: ASGIApp, tokens: tuple[str, ...], public_paths: Collection[str]):
        self.app = app
        self.accepted = [(token.encode(), principal_of(token)) for token in tokens]
        self.public_paths = frozenset(public_paths)
        self.refused = JSONResponse(
            {"detail": "missing or unknown token: send Authorization: Bearer <token>"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.accepted:
            scope[PRINCIPAL_SCOPE_KEY] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        principal = self._principal(Headers(scope=scope).get("authorization", ""))
        if principal is None and scope["path"] not in self.public_paths:
            await self.refused(scope, receive, send)
            return
        scope[PRINCIPAL_SCOPE_KEY] = principal or ANONYMOUS
        await self.app(scope, receive, send)

    def _principal(self, authorization: str) -> str | None:
        scheme, _, param = authorization.partition(" ")
        if scheme.lower() == "bearer":
            presented: str | None = param.strip()
        elif scheme.lower() == "basic":
            presented = _basic_user(param)
        else:
            presented = None
        if not presented:
            return None
        given = presented.encode(errors="replace")
        # Every token compared, in constant time each: the time says nothing of which matched.
        found = None
        for token, principal in self.accepted:
            if hmac.compare_digest(given, token):
                found = principal
        return found


def principal_dependency(with_tokens: bool) -> Callable[..., str]:
    """A dependency returning the caller's principal, as ``Authentication`` found it.

    With tokens it also declares the bearer scheme, for the OpenAPI document.
    """
    bearer = HTTPBearer(auto_error=False, description="one of the gateway's auth_tokens")

    def principal(request: Request) -> str:
        found = request.scope.get(PRINCIPAL_SCOPE_KEY)
        if not isinstance(found, str):
            # Only without the Authentication middleware in front: refuse rather than guess.
            raise HTTPException(status_code=401, detail="no authentication in front of the app")
        return found

    if not with_tokens:
        return principal

    def token_principal(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> str:
        return principal(request)

    return token_principal


def _basic_user(param: str) -> str | None:
    try:
        return b64decode(param.strip(), validate=True).decode().partition(":")[0]
    except ValueError:
        return None
