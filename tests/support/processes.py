"""Echo servers, workers, gateways and clients started for a test, and stopped after it.

Everything listens on 127.0.0.1 only. Every process runs in its own session (process group), and
teardown kills whatever is left of that group; a failing test shows the end of each log.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from forwarder.client.broker import ForwarderClient
from forwarder.config.settings import load_settings
from forwarder.devtools.localrun import HOST, start_forwarder
from support.echo import EchoServer
from support.env import GATEWAY_ENV_VARS, env_changes
from support.gateway import GATEWAY_RE, Gateway
from support.workers import Worker

__all__ = ["Processes", "command_args", "module_procs", "procs"]


def command_args(flags: Mapping[str, object | None], sets: Sequence[str] = ()) -> list[str]:
    """``FLAG VALUE`` for each flag that has a value, then ``--set KEY=VALUE`` for each of ``sets``."""
    args = [
        part for flag, value in flags.items() if value is not None for part in (flag, str(value))
    ]
    return args + [part for override in sets for part in ("--set", override)]


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
        flags = {
            "--broker-url": broker_url,
            "--data-dir": data_dir,
            "--queue": queue,
            "--concurrency": concurrency,
            "--pool": pool,
        }
        model = [f"forwarder.async.user_port={model_port}", f"forwarder.async.user_hostname={HOST}"]
        args = [*command_args(flags, [*model, *sets]), *extra_args]
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
        flags = {
            "--host": HOST,
            "--port": 0,
            "--broker-url": broker_url,
            "--data-dir": data_dir,
            "--queue": queue,
        }
        args = ["gateway", *command_args(flags, sets)]
        gateway_env = env_changes(
            XDG_DATA_HOME=str(self.log_dir / "xdg-data"),
            **{**dict.fromkeys(GATEWAY_ENV_VARS), **(env or {})},
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
    """This test's processes, in its own folder; all stopped when it ends."""
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Processes shared by a module's tests (a deployment started once); stopped after them."""
    processes = Processes(tmp_path_factory.mktemp("procs"))
    try:
        yield processes
    finally:
        processes.close()
