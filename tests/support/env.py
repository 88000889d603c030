"""The environment a test's processes start with: only the test's own settings reach them."""

from __future__ import annotations

from forwarder.devtools.localrun import environment

__all__ = [
    "GATEWAY_ENV_VARS",
    "WORKER_ENV_VARS",
    "base_env",
    "env_changes",
]

# Variables the worker reads; removed from the inherited environment so that only the test's own
# values reach a worker, whatever the shell running pytest has set.
WORKER_ENV_VARS = (
    "CELERY_WORKER_POOL",
    "CELERY_WORKER_MAX_TASKS_PER_CHILD",
    "FIREHOSE_CLIENT_MAX_POOL_CONNECTIONS",
    "SERIALIZE_RESULTS_AS_STRING",
    "FORWARDER_BROKER_URL",
    "FORWARDER_RESULT_BACKEND",
    "FORWARDER_QUEUE",
    "FORWARDER_DATA_DIR",
    "FORWARDER_LOG_LEVEL",
    "AWS_ENDPOINT_URL",
)

# What the gateway and the gateway client read; removed the same way for a gateway's process.
GATEWAY_ENV_VARS = (
    "FORWARDER_GATEWAY_HOST",
    "FORWARDER_GATEWAY_PORT",
    "FORWARDER_GATEWAY_TOKENS",
    "FORWARDER_GATEWAY_URL",
    "FORWARDER_GATEWAY_TOKEN",
)


def env_changes(**overrides: str | None) -> dict[str, str | None]:
    """What a test's process changes in the inherited environment (``None`` removes)."""
    return {**dict.fromkeys(WORKER_ENV_VARS), "PYTHONUNBUFFERED": "1", **overrides}


def base_env(**overrides: str) -> dict[str, str]:
    """The whole environment of a test's process: this one's, changed by ``env_changes``."""
    return environment(env_changes(**overrides))
