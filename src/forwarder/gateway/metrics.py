"""The gateway's own Prometheus metrics, served at ``/metrics``: requests by route and status.

Each app has its own registry, so several apps in one process (tests) never collide. Routes are
their templates (``/v1/async-tasks/{task_id}``), not the paths asked for: one series per route,
however many task ids are seen.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forwarder.observability.metrics import LATENCY_BUCKETS

__all__ = ["add_metrics"]


class _RequestMetrics:
    def __init__(
        self, app: ASGIApp, requests: Counter, seconds: Histogram, routes: list[BaseRoute]
    ) -> None:
        self.app = app
        self.requests = requests
        self.seconds = seconds
        self.routes = routes

    def _route(self, scope: Scope) -> str:
        # A request refused before routing (413, 415) still names the route it was for.
        routed = getattr(scope.get("route"), "path", None)
        if routed:
            return str(routed)
        for route in self.routes:
            if route.matches(scope)[0] is Match.FULL:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = self._route(scope)
            method = str(scope.get("method", ""))
            self.requests.labels(method, route, str(status)).inc()
            self.seconds.labels(method, route).observe(time.perf_counter() - started)


def add_metrics(app: FastAPI, *, route: bool = True) -> CollectorRegistry:
    """Count every request; serve the counts at ``/metrics`` if ``route``. The registry."""
    registry = CollectorRegistry()
    requests = Counter(
        "forwarder_gateway_requests",
        "Requests by method, route and status.",
        ["method", "route", "status"],
        registry=registry,
    )
    seconds = Histogram(
        "forwarder_gateway_request_seconds",
        "Time to answer each request.",
        ["method", "route"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )

    async def metrics(_: Any) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if route:
        app.add_route("/metrics", metrics, include_in_schema=False)
    app.add_middleware(_RequestMetrics, requests=requests, seconds=seconds, routes=app.routes)
    return registry
