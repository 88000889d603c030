"""A small model server with the routes real ones serve, for the tests: FastAPI under uvicorn.

``python model_server_routes.py --model NAME [--unloaded]`` prints
``listening on http://127.0.0.1:PORT`` once its socket (bound here, on a free port) listens.

- The V2 inference protocol as MLServer and Triton serve it: ``GET /v2/health/ready`` is the
  server's readiness (200 even with no model loaded), ``GET /v2/models/NAME/ready`` the model's
  (200 when loaded, 404 when not), ``POST /v2/models/NAME/infer`` doubles every input tensor,
  ``POST /v2/repository/models/NAME/load`` and ``/unload`` load and unload it. An infer request
  whose first input is named ``crash`` raises inside the model: like MLServer for an error it
  did not expect, the server answers a plain-text 500.
- OpenAI's routes as vLLM serves them: ``GET /health``, ``POST /v1/completions`` and
  ``POST /v1/chat/completions`` (the reply echoes the prompt reversed).
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["make_app"]


def make_app(model: str, loaded: bool) -> FastAPI:
    app = FastAPI()
    models = {model} if loaded else set()

    def not_found(name: str) -> JSONResponse:
        return JSONResponse({"error": f"Model {name} not found"}, status_code=404)

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def server_ready() -> dict[str, Any]:
        return {}

    @app.get("/v2/models/{name}/ready", response_model=None)
    async def model_ready(name: str) -> dict[str, Any] | JSONResponse:
        return {} if name in models else not_found(name)

    @app.post("/v2/repository/models/{name}/{action}")
    async def repository(name: str, action: str) -> dict[str, Any]:
        if action == "load":
            models.add(name)
        else:
            models.discard(name)
        return {}

    @app.post("/v2/models/{name}/infer", response_model=None)
    async def infer(name: str, request: Request) -> dict[str, Any] | JSONResponse:
        if name not in models:
            return not_found(name)
        inputs = (await request.json())["inputs"]
        if inputs[0]["name"] == "crash":
            raise RuntimeError("the model raised")
        outputs = [
            {**tensor, "name": f"output-{index}", "data": [2 * x for x in tensor["data"]]}
            for index, tensor in enumerate(inputs)
        ]
        return {"model_name": name, "outputs": outputs}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict[str, Any]:
        body = await request.json()
        choice = {"index": 0, "text": body["prompt"][::-1], "finish_reason": "length"}
        return {"object": "text_completion", "model": body["model"], "choices": [choice]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        text = body["messages"][-1]["content"][::-1]
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {"object": "chat.completion", "model": body["model"], "choices": [choice]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--unloaded", action="store_true")
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(
        uvicorn.Config(make_app(args.model, not args.unloaded), log_level="warning")
    )
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
