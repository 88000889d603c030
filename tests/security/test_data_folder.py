"""The embedded broker's data folder is its owner's only, and dead letters show no secrets.

A real worker on the embedded broker: a task with callback credentials succeeds (its result is
a file) and one with an id that cannot be stored is dead-lettered (a message file). Every folder
is 0700 and every file 0600; ``dead-letter list --show-payload`` masks the credentials unless
``--show-secrets`` is given.
"""

from __future__ import annotations

import json
import signal
import stat
from pathlib import Path

import pytest

from forwarder.celery_ext.brokers import broker_config
from forwarder.cli.commands import main
from forwarder.config.settings import WorkerSettings, environment_variables
from support.processes import Processes
from support.waiting import wait_for, wait_one

pytestmark = pytest.mark.integration

PASSWORD = "pw-Zq81 dead letter"
AUTH = {"kind": "basic", "username": "u", "password": PASSWORD}


def modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root.parent)): stat.S_IMODE(path.stat().st_mode)
        for path in [root, *root.rglob("*")]
    }


def test_a_new_folder_is_private_and_an_existing_one_s_subfolders_are_tightened(
    tmp_path: Path,
) -> None:
    new = tmp_path / "new" / "data"
    broker_config(WorkerSettings(data_dir=new))
    assert set(modes(new).values()) == {0o700}
    root = tmp_path / "data"
    (root / "results").mkdir(parents=True, mode=0o755)
    root.chmod(0o755)
    broker_config(WorkerSettings(data_dir=root))
    # The folder given may be the operator's own (shared with other things): left as it is.
    assert {name: mode for name, mode in modes(root).items()} == {
        "data": 0o755,
        "data/queue": 0o700,
        "data/control": 0o700,
        "data/results": 0o700,
    }


@pytest.mark.timeout(90)
def test_messages_results_and_dead_letters_are_private_and_masked(
    procs: Processes,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_dir = tmp_path / "data"
    echo = procs.echo()
    worker = procs.worker(model_port=echo.port, data_dir=data_dir, queue="private")
    client = procs.client(data_dir=data_dir, queue="private")
    client.submit({"args": {"n": 1}, "callback_auth": AUTH}, task_id="bad/id")
    good = client.submit({"args": {"n": 2}, "callback_auth": AUTH})
    assert wait_one(client, good, timeout=40).status == "SUCCESS"
    queue = data_dir / "queue"
    wait_for(lambda: list(queue.glob("*.private-dead-letter.msg")), 20, "no dead letter")
    assert worker.stop(signal.SIGTERM, timeout=20) == 0

    found = modes(data_dir)
    assert any(name.startswith("data/results/celery-task-meta-") for name in found), found
    loose = {
        name: oct(mode)
        for name, mode in found.items()
        if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)
    }
    assert not loose, f"readable by others: {loose}"

    for name in environment_variables():
        monkeypatch.delenv(name, raising=False)
    argv = ["dead-letter", "list", "--data-dir", str(data_dir), "--queue", "private"]
    assert main([*argv, "--show-payload"]) == 0
    [masked] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert PASSWORD not in json.dumps(masked)
    assert masked["args"][0]["callback_auth"] == {
        "kind": "basic",
        "username": "u",
        "password": "***",
    }
    assert main([*argv, "--show-payload", "--show-secrets"]) == 0
    assert PASSWORD in capsys.readouterr().out
