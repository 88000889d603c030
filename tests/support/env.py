"""The environment a test's processes start with: only the test's own settings reach them."""

from __future__ import annotations

from forwarder.config.settings import environment_variables
from forwarder.devtools.localrun import environment

__all__ = [
    "GATEWAY_ENV_VARS",
    "WORKER_ENV_VARS",
    "base_env",
    "env_changes",
]

# Every variable the settings read, and the AWS endpoint the worker's boto3 clients read:
# removed from the inherited environment so that only the test's own values reach a worker or a
# gateway, whatever the shell running pytest has set.
WORKER_ENV_VARS = (*environment_variables(), "AWS_ENDPOINT_URL")
GATEWAY_ENV_VARS = environment_variables()


def env_changes(**overrides: str | None) -> dict[str, str | None]:
    """What a test's process changes in the inherited environment (``None`` removes)."""
    return {**dict.fromkeys(WORKER_ENV_VARS), "PYTHONUNBUFFERED": "1", **overrides}


def base_env(**overrides: str) -> dict[str, str]:
    """The whole environment of a test's process: this one's, changed by ``env_changes``."""
    return environment(env_changes(**overrides))
