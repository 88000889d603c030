"""Real processes for the integration tests: redis-server, echo model servers and workers.

Everything listens on 127.0.0.1 only. Every wait is bounded in time; every process a test starts
runs in its own session (process group), and teardown kills whatever is left of that group.
The processes themselves are ``forwarder.devtools.localrun`` children; what is here is the tests' part:
failing the test with the log, a clean environment, one Redis database per test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import redis

from forwarder.client.broker import ForwarderClient, TaskResult
from forwarder.config.settings import environment_variables, load_settings
from forwarder.devtools.localrun import (
    HOST,
    Child,
    aws_environment,
    environment,
    find_redis_server,
    free_port,
    start_echo_server,
    start_forwarder,
    start_moto,
    start_redis,
)

READY_RE = re.compile(r"celery@\S+ ready\.")
GATEWAY_RE = re.compile(r"gateway listening on (http://127\.0\.0\.1:\d+)")
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
REDIS_DATABASES = 64

# Variables the worker reads; removed from the inherited environment so that only the test's own
# values reach a worker, whatever the shell running pytest has set.
_WORKER_ENV_VARS = (*environment_variables(), "AWS_ENDPOINT_URL")

# What the gateway and the gateway client read; removed the same way for a gateway's process.
_GATEWAY_ENV_VARS = environment_variables()


# --------------------------------------------------------------------------------------------
# Small bounded helpers
# --------------------------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.05,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds.

    ``message`` may be a callable, to describe the state at the time of the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:g} s: {text}")
        time.sleep(interval)


def env_changes(**overrides: str | None) -> dict[str, str | None]:
    """What a test's process changes in the inherited environment (``None`` removes)."""
    return {**dict.fromkeys(_WORKER_ENV_VARS), "PYTHONUNBUFFERED": "1", **overrides}


def base_env(**overrides: str) -> dict[str, str]:
    return environment(env_changes(**overrides))


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


class EchoServer:
    """``python -m forwarder echo-server`` in a subprocess; can stop and start on the same port."""

    def __init__(self, log_dir: Path, name: str, port: int = 0, args: Sequence[str] = ()) -> None:
        self.log_path = log_dir / f"{name}.log"
        self.port = port
        self.args = list(args)
        self.child: Child | None = None

    def start(self, timeout: float = 15.0) -> EchoServer:
        assert self.child is None or not self.child.running, "echo server already running"
        try:
            self.child, self.port = start_echo_server(
                self.log_path, *self.args, port=self.port, env=env_changes(), timeout=timeout
            )
        except RuntimeError as exc:
            pytest.fail(f"echo server did not start: {exc}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        return None if self.child is None else self.child.stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        if self.child is not None:
            self.child.kill()

    def get(self, route: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{route}", timeout=5) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats")
        assert status == 200, body
        return dict(body)


class Worker:
    """``python -m forwarder worker ...`` in its own process group, logging to a file."""

    def __init__(self, args: Sequence[str], env: dict[str, str | None], log_path: Path) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.child = start_forwarder(["worker", *self.args], log_path, env, cwd=log_path.parent)

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def running(self) -> bool:
        return self.child.running

    def log(self) -> str:
        return self.child.log()

    def is_ready(self) -> bool:
        return bool(READY_RE.search(self.log()))

    def wait_ready(self, timeout: float = 30.0) -> Worker:
        try:
            self.child.wait_for(READY_RE.pattern, timeout)
        except RuntimeError as exc:
            pytest.fail(f"worker not ready within {timeout:g} s: {exc}")
        return self

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` to the worker's main process and return its exit status.

        Fails the test (after killing the process group) if it does not exit within ``timeout``.
        """
        status = self.child.stop(sig, timeout)
        if self.child.stop_timed_out:
            pytest.fail(
                f"worker did not exit within {timeout:g} s of signal {sig}:\n{self.child.tail()}"
            )
        return status

    def cleanup(self) -> None:
        """Kill the worker and its whole process group.

        Not a warm shutdown: an idle gevent worker takes ~4 s to stop warmly, and the tests that
        are about shutdown call ``stop()`` themselves. The test's Redis database is discarded.
        """
        self.child.kill()


@dataclass
class Gateway:
    """``python -m forwarder gateway`` on a free port of 127.0.0.1; ``url`` is where it listens."""

    child: Child
    url: str
    args: list[str]


class Processes:
    """Starts echo servers, workers, gateways and clients; ``close()`` stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.echo_servers: list[EchoServer] = []
        self.workers: list[Worker] = []
        self.gateways: list[Gateway] = []
        self.clients: list[ForwarderClient] = []

    def echo(
        self,
        port: int = 0,
        *,
        delay: float | None = None,
        ready_after: float | None = None,
        start: bool = True,
    ) -> EchoServer:
        args: list[str] = []
        if delay is not None:
            args += ["--delay", str(delay)]
        if ready_after is not None:
            args += ["--ready-after", str(ready_after)]
        server = EchoServer(self.log_dir, f"echo-{len(self.echo_servers)}", port, args)
        self.echo_servers.append(server)
        return server.start() if start else server

    def worker(
        self,
        *,
        model_port: int,
        pool: str | None = "prefork",
        queue: str | None = "inference",
        broker_url: str | None = None,
        data_dir: Path | None = None,
        concurrency: int | None = 1,
        sets: Sequence[str] = (),
        env: Mapping[str, str | None] | None = None,
        extra_args: Sequence[str] = (),
        wait: bool = True,
        ready_timeout: float = 30.0,
    ) -> Worker:
        args: list[str] = []
        if broker_url is not None:
            args += ["--broker-url", broker_url]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if queue is not None:
            args += ["--queue", queue]
        if concurrency is not None:
            args += ["--concurrency", str(concurrency)]
        if pool is not None:
            args += ["--pool", pool]
        overrides = [
            f"forwarder.async.user_port={model_port}",
            f"forwarder.async.user_hostname={HOST}",
            *sets,
        ]
        for override in overrides:
            args += ["--set", override]
        args += list(extra_args)
        # The embedded default's folder must never fall back to the user's real data folder.
        worker_env = env_changes(XDG_DATA_HOME=str(self.log_dir / "xdg-data"), **(env or {}))
        worker = Worker(args, worker_env, self.log_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker.wait_ready(ready_timeout) if wait else worker

    def gateway(
        self,
        *,
        broker_url: str | None = None,
        data_dir: Path | None = None,
        queue: str | None = "inference",
        sets: Sequence[str] = (),
        env: Mapping[str, str | None] | None = None,
        timeout: float = 30.0,
    ) -> Gateway:
        """A gateway, up and listening on a port it picked itself (no race for a free port)."""
        args = ["gateway", "--host", HOST, "--port", "0"]
        if broker_url is not None:
            args += ["--broker-url", broker_url]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if queue is not None:
            args += ["--queue", queue]
        for override in sets:
            args += ["--set", override]
        gateway_env = env_changes(
            XDG_DATA_HOME=str(self.log_dir / "xdg-data"),
            **{**dict.fromkeys(_GATEWAY_ENV_VARS), **(env or {})},
        )
        log_path = self.log_dir / f"gateway-{len(self.gateways)}.log"
        child = start_forwarder(args, log_path, gateway_env, cwd=self.log_dir)
        gateway = Gateway(child, "", args)
        self.gateways.append(gateway)
        try:
            gateway.url = child.wait_for(GATEWAY_RE.pattern, timeout).group(1)
        except RuntimeError as exc:
            pytest.fail(f"gateway did not start: {exc}")
        return gateway

    def client(
        self,
        *,
        broker_url: str | None = None,
        data_dir: Path | None = None,
        queue: str,
        extra_flags: Mapping[str, object] | None = None,
    ) -> ForwarderClient:
        flags: dict[str, object] = {"--queue": queue, **(extra_flags or {})}
        if broker_url is not None:
            flags["--broker-url"] = broker_url
        if data_dir is not None:
            flags["--data-dir"] = str(data_dir)
        client = ForwarderClient(load_settings(env={}, flags=flags))
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                client.close()
        for worker in self.workers:
            worker.cleanup()
        for gateway in self.gateways:
            gateway.child.kill()
        for server in self.echo_servers:
            server.kill()
        # Shown by pytest only when the test fails.
        for worker in self.workers:
            sys.stderr.write(f"----- {worker.log_path.name}: {worker.args}\n")
            sys.stderr.write(worker.child.tail(40) + "\n")
        for gateway in self.gateways:
            sys.stderr.write(f"----- {gateway.child.log_path.name}: {gateway.args}\n")
            sys.stderr.write(gateway.child.tail(40) + "\n")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    processes = Processes(tmp_path_factory.mktemp("procs"))
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def start_echo(procs: Processes) -> Callable[..., EchoServer]:
    """Echo server factory: ``start_echo(port=0, delay=None, ready_after=None, start=True)``."""
    return procs.echo


@pytest.fixture
def start_worker(procs: Processes) -> Callable[..., Worker]:
    """Worker factory: ``start_worker(model_port=..., pool=..., broker_url=..., ...)``."""
    return procs.worker


@pytest.fixture
def start_gateway(procs: Processes) -> Callable[..., Gateway]:
    """Gateway factory: ``start_gateway(broker_url=..., queue=..., sets=..., env=...)``."""
    return procs.gateway


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


class RedisServer:
    def __init__(self, port: int, child: Child) -> None:
        self.port = port
        self.child = child
        self._in_use: set[int] = set()

    def url(self, db: int) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def acquire_db(self) -> int:
        """A fresh (flushed) database number that no live fixture is using."""
        for db in range(REDIS_DATABASES):
            if db not in self._in_use:
                self._in_use.add(db)
                with redis.Redis(host=HOST, port=self.port, db=db, socket_timeout=5) as conn:
                    conn.flushdb()
                return db
        raise RuntimeError("no free redis database")

    def release_db(self, db: int) -> None:
        self._in_use.discard(db)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if find_redis_server() is None:
        reason = (
            "redis-server not found ($REDIS_SERVER, PATH or /usr/bin/redis-server); "
            "install it with: apt-get install redis-server"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so this is an error")
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("redis")
    try:
        child, port = start_redis(folder, "--databases", str(REDIS_DATABASES), timeout=10)
    except RuntimeError as exc:
        pytest.fail(f"redis-server did not start: {exc}")
    try:
        yield RedisServer(port, child)
    finally:
        child.stop(signal.SIGTERM, timeout=10)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A fresh, empty Redis database for this test (broker and result backend)."""
    db = redis_server.acquire_db()
    try:
        yield redis_server.url(db)
    finally:
        redis_server.release_db(db)


@pytest.fixture(scope="module")
def module_redis_url(redis_server: RedisServer) -> Iterator[str]:
    db = redis_server.acquire_db()
    try:
        yield redis_server.url(db)
    finally:
        redis_server.release_db(db)


# --------------------------------------------------------------------------------------------
# A callback receiver
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """An HTTP server in this process that records every POST and answers ``statuses`` in turn.

    Once ``statuses`` is used up it answers 200.
    """

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/callback") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def by_task_id(self) -> dict[str, Received]:
        with self._lock:
            return {r.json()["task_id"]: r for r in self.received}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


# --------------------------------------------------------------------------------------------
# AWS (moto's server mode)
# --------------------------------------------------------------------------------------------


class MotoServer:
    """moto on 127.0.0.1: ``env`` points a child's AWS clients at it, ``client()`` this process's."""

    region = "us-east-1"

    def __init__(self, endpoint_url: str, child: Child) -> None:
        self.endpoint_url = endpoint_url
        self.child = child
        self.env: dict[str, str | None] = aws_environment(endpoint_url, self.region)

    def client(self, service: str, **kwargs: Any) -> Any:
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            **kwargs,
        )

    def firehose_to_s3(self, stream: str, bucket: str) -> None:
        """A bucket and a delivery stream into it: moto writes each put call there at once."""
        self.client("s3").create_bucket(Bucket=bucket)
        self.client("firehose").create_delivery_stream(
            DeliveryStreamName=stream,
            DeliveryStreamType="DirectPut",
            ExtendedS3DestinationConfiguration={
                "RoleARN": "arn:aws:iam::123456789012:role/firehose-delivery",
                "BucketARN": f"arn:aws:s3:::{bucket}",
                "Prefix": "records/",
            },
        )

    def s3_objects(self, bucket: str) -> list[bytes]:
        s3 = self.client("s3")
        keys = [
            item["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for item in page.get("Contents", [])
        ]
        return [s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys]

    def s3_json_lines(self, bucket: str) -> list[Any]:
        return [json.loads(line) for body in self.s3_objects(bucket) for line in body.splitlines()]

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    try:
        child, endpoint_url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    except RuntimeError as exc:
        pytest.fail(f"moto server did not start: {exc}")
    try:
        yield MotoServer(endpoint_url, child)
    finally:
        child.stop(signal.SIGTERM, timeout=10)


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def moto_here(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """``moto``, also behind this test process's AWS clients (they read the environment)."""
    for name, value in moto.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return moto


def stored_meta(url: str, task_id: str) -> dict[str, Any] | None:
    """The raw JSON Celery stored for the task, read straight from Redis."""
    with redis.Redis.from_url(url, socket_timeout=5) as conn:
        raw = conn.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def wait_all(
    client: ForwarderClient, task_ids: Sequence[str], timeout: float, interval: float = 0.05
) -> dict[str, TaskResult]:
    """Poll until every task is in a final state; fail with their states after ``timeout``."""
    deadline = time.monotonic() + timeout
    done: dict[str, TaskResult] = {}
    while True:
        for task_id in task_ids:
            if task_id not in done:
                current = client.get(task_id)
                if current.status in FINAL_STATES:
                    done[task_id] = current
        if len(done) == len(task_ids):
            return done
        if time.monotonic() >= deadline:
            pending = {t: client.get(t).status for t in task_ids if t not in done}
            pytest.fail(f"after {timeout:g} s, {len(pending)} task(s) not done: {pending}")
        time.sleep(interval)


def wait_one(client: ForwarderClient, task_id: str, timeout: float = 15.0) -> TaskResult:
    return wait_all(client, [task_id], timeout)[task_id]


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """The module-level helpers above, for test modules (which do not import conftest)."""
    return SimpleNamespace(
        free_port=free_port,
        stored_meta=stored_meta,
        wait_all=wait_all,
        wait_for=wait_for,
        wait_one=wait_one,
        base_env=base_env,
        HOST=HOST,
    )
