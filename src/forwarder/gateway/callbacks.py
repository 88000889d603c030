"""A task's callback delivery, as the gateway shows it, and its redelivery route.

``GET /v1/async-tasks/{task_id}`` carries the delivery state in a field of its own, ``callback``
(null when the task has no queued callback), so model-engine's fields keep their shape.
``POST /v1/async-tasks/{task_id}/callback/redeliver`` sends a failed callback again: 202 with the
state (``pending``), 409 when the callback has not failed (pending, delivered, or none).
"""

# No ``from __future__ import annotations``: FastAPI reads the route's annotations at run time.

from typing import Annotated, Any

from celery import Celery
from fastapi import Depends, FastAPI, HTTPException

from forwarder.config.settings import Settings
from forwarder.gateway.models import CallbackDeliveryView
from forwarder.gateway.routes import TaskRoutes, blocking, include_task_router
from forwarder.hooks.deliveries.control import redeliver
from forwarder.hooks.deliveries.state import StateStore

__all__ = ["CallbackDeliveries", "add_redeliver_route"]


class CallbackDeliveries:
    """Delivery states read from, and redeliveries sent through, the client's Celery app."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app

    def view(self, task_id: str) -> CallbackDeliveryView | None:
        state = StateStore(self.app.backend).get(task_id)
        return None if state is None else CallbackDeliveryView(**state.as_dict())

    def redeliver(self, task_id: str) -> CallbackDeliveryView | None:
        """The state the redelivery stored (pending: the deliverer may be done already when this
        answers); None when there was no failed callback to send."""
        done = redeliver(self.settings, self.app, [task_id])
        return CallbackDeliveryView(**done.redelivered[0].as_dict()) if done.redelivered else None


def add_redeliver_route(app: FastAPI, routes: TaskRoutes, deliveries: CallbackDeliveries) -> None:
    responses: dict[int | str, dict[str, Any]] = {
        **routes.responses,
        409: {"description": "The task's callback has not failed (pending, delivered, or none)"},
    }

    router = routes.task_router()
    OwnedTask = Annotated[str, Depends(routes.owned_task)]

    @router.post(
        "/callback/redeliver",
        response_model=CallbackDeliveryView,
        status_code=202,
        responses=responses,
        summary="Deliver a failed callback again",
    )
    async def redeliver_callback(task_id: OwnedTask) -> CallbackDeliveryView:
        view: CallbackDeliveryView | None = await blocking(deliveries.redeliver, task_id)
        if view is None:
            raise HTTPException(status_code=409, detail="the task's callback has not failed")
        return view

    include_task_router(app, router)
