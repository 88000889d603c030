"""A model server that streams, for the tests: FastAPI's StreamingResponse under uvicorn.

``python sse_model_server.py`` prints ``listening on http://127.0.0.1:PORT`` once its socket
(bound here, on a free port) listens.

- ``POST /v1/chat/completions`` with ``{"tokens": N, "delay": S}`` streams N OpenAI chat chunks
  (``tok0 ``, ``tok1 ``, ...) as SSE, S seconds apart, an ``event: progress`` every 10 tokens,
  a last chunk with ``finish_reason`` and ``usage``, then ``data: [DONE]``.
- ``POST /ndjson`` with ``{"lines": N}`` streams N JSON lines ``{"n": i}``.
- ``GET /health``: 200.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

__all__ = ["chunk", "make_app"]


def chunk(index: int | None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    delta = {} if index is None else {"content": f"tok{index} "}
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "streamer",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def make_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        tokens, delay = int(body["tokens"]), float(body.get("delay", 0))

        async def events() -> AsyncIterator[str]:
            for index in range(tokens):
                if index and index % 10 == 0:
                    yield f"event: progress\ndata: {json.dumps({'done': index})}\n\n"
                yield f"data: {json.dumps(chunk(index))}\n\n"
                await asyncio.sleep(delay)
            usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
            yield f"data: {json.dumps(chunk(None, 'stop', usage))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/ndjson")
    async def ndjson(request: Request) -> StreamingResponse:
        lines = int((await request.json())["lines"])

        async def rows() -> AsyncIterator[str]:
            for index in range(lines):
                yield json.dumps({"n": index}) + "\n"
                await asyncio.sleep(0.01)

        return StreamingResponse(rows(), media_type="application/x-ndjson")

    return app


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(make_app(), log_level="warning"))
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
