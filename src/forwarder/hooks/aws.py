"""AWS clients that live as long as their credentials: built once per process, rebuilt shortly
before the credentials expire, never per task.

Building a client per call (an STS client, an AssumeRole round trip and a new Firehose client
for every record) grew a long-lived worker's memory until it was killed; ``RefreshingClient``
holds one client per process instead and only rebuilds it near expiry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

from forwarder.config.hooks import LoggingSettings
from forwarder.errors import ConfigError
from forwarder.extras import import_extra
from forwarder.observability.metrics import recorder
from forwarder.process_local import ProcessLocal

__all__ = [
    "DEFAULT_LEEWAY",
    "RefreshingClient",
    "assume_role_firehose_client",
    "aws_region",
    "import_boto3",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LEEWAY = timedelta(minutes=10)
# STS rejects shorter sessions; botocore checks it too, before sending.
STS_MIN_DURATION_SECONDS = 900
# botocore's defaults (60 s to connect, 4 retries) would hold a batch for minutes when an
# endpoint is unreachable; the sink retries whole Firehose calls itself, with its own bound.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0


@dataclass
class _Held(Generic[T]):
    """One process's client and counts; its lock is that process's own."""

    client: tuple[T, datetime | None] | None = None  # (client, expiry), swapped in as one
    builds: int = 0
    failed_builds: int = 0
    # Under gevent the patched threading makes this a greenlet lock.
    lock: threading.Lock = field(default_factory=threading.Lock)


class RefreshingClient(Generic[T]):
    """One client per process from ``build``, rebuilt when it is within ``leeway`` of expiry.

    ``build`` returns ``(client, expiry)``; an expiry of None never expires. The pair is swapped
    in together, so a failed rebuild leaves the old client and its expiry in place: the old
    client is served and the next ``get()`` tries again. With no client yet, the error is raised.
    A client inherited through fork shares its connections with the parent: a child builds its
    own, and counts its own builds.
    """

    def __init__(
        self,
        build: Callable[[], tuple[T, datetime | None]],
        *,
        leeway: timedelta = DEFAULT_LEEWAY,
        name: str = "aws",
    ) -> None:
        self._build = build
        self.leeway = leeway
        self.name = name
        self._held: ProcessLocal[_Held[T]] = ProcessLocal(_Held)

    @property
    def expiry(self) -> datetime | None:
        held = self._held.get().client
        return None if held is None else held[1]

    @property
    def builds(self) -> int:
        return self._held.get().builds

    @property
    def failed_builds(self) -> int:
        return self._held.get().failed_builds

    def _expiring(self, expiry: datetime | None) -> bool:
        return expiry is not None and datetime.now(UTC) >= expiry - self.leeway

    def get(self) -> T:
        held = self._held.get()
        current = held.client
        if current is not None and not self._expiring(current[1]):
            return current[0]
        with held.lock:
            current = held.client
            if current is not None and not self._expiring(current[1]):
                return current[0]
            try:
                fresh = self._build()
            except Exception:
                held.failed_builds += 1
                recorder().aws_client_built(self.name, ok=False)
                if current is None:
                    raise
                log.warning(
                    "rebuilding the AWS client failed; keeping the current one (expires %s)",
                    current[1],
                    exc_info=True,
                )
                return current[0]
            held.client = fresh
            held.builds += 1
            recorder().aws_client_built(self.name, ok=True)
            return fresh[0]


def import_boto3() -> Any:
    """boto3, or a ConfigError saying how to install it (it is an optional dependency)."""
    return import_extra(
        "boto3",
        "aws",
        lambda hint: ConfigError("logging.sink", "firehose", f"the sink with {hint}"),
    )


def aws_region(settings: LoggingSettings) -> str:
    """``logging.region``, else the region of the AWS environment (AWS_DEFAULT_REGION, config)."""
    region = settings.region or import_boto3().session.Session().region_name
    if not region:
        raise ConfigError(
            "logging.region", None, "an AWS region, or AWS_DEFAULT_REGION in the environment"
        )
    return str(region)


def assume_role_firehose_client(
    settings: LoggingSettings, max_pool_connections: int
) -> tuple[Any, datetime | None]:
    """A Firehose client and when its credentials expire; touches no state.

    With ``role_arn`` the role is assumed for ``session_duration_seconds`` and the client signs
    with those temporary credentials; without it the default credential chain is used (it
    refreshes itself), and the expiry is None.
    """
    boto3 = import_boto3()
    from botocore.config import Config

    region = aws_region(settings)
    # A session per build, not boto3's shared default one: sessions are not thread-safe, and
    # a build happens once per credential lifetime.
    session = boto3.session.Session(region_name=region)
    firehose_config = Config(
        max_pool_connections=max_pool_connections,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"total_max_attempts": 1},
    )
    if not settings.role_arn:
        return session.client("firehose", config=firehose_config), None

    duration = settings.session_duration_seconds
    sts_config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        # Only short test credentials go below STS's minimum; skipping botocore's check lets a
        # local STS stand-in issue them.
        parameter_validation=duration >= STS_MIN_DURATION_SECONDS,
    )
    sts = session.client("sts", config=sts_config)
    try:
        credentials = sts.assume_role(
            RoleArn=settings.role_arn,
            RoleSessionName=settings.role_session_name,
            DurationSeconds=duration,
        )["Credentials"]
    finally:
        sts.close()
    client = session.client(
        "firehose",
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=firehose_config,
    )
    expiration: datetime = credentials["Expiration"]
    return client, expiration
