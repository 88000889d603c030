"""Metrics: off by default; under prefork the counts of exited processes are kept, their files not.

The multiprocess mode is chosen when prometheus_client is imported, so each case runs in a fresh
interpreter that forks its own short-lived children, like a prefork pool recycling them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from forwarder.observability import metrics

SCRIPT = textwrap.dedent(
    """
    import glob, json, os, socket, urllib.request
    from forwarder.observability import metrics

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    metrics.enable(port, "127.0.0.1", multiprocess=True)
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    scrapes = []
    for generation in range(3):
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                recorder = metrics.recorder()
                for _ in range(5):
                    recorder.task_finished("q", "success")
                recorder.model_call("q", 0.03)
                recorder.in_flight("q", 1)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.waitpid(pid, 0)
        url = f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        files = sorted(os.path.basename(path) for path in glob.glob(folder + "/*"))
        scrapes.append({"body": body, "files": files})
    print(json.dumps(scrapes))
    """
)


def samples(body: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def test_nothing_is_recorded_until_enabled() -> None:
    assert type(metrics.recorder()) is metrics.Recorder


def test_exited_children_keep_their_counts_and_leave_no_files() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    scrapes = json.loads(completed.stdout)
    for generation, scrape in enumerate(scrapes, start=1):
        values = samples(scrape["body"])
        assert (
            values['forwarder_tasks_finished_total{queue="q",status="success"}'] == 15 * generation
        )
        assert values['forwarder_model_call_seconds_count{queue="q"}'] == 3 * generation
        assert values['forwarder_model_call_seconds_bucket{le="0.025",queue="q"}'] == 0
        assert values['forwarder_model_call_seconds_bucket{le="0.05",queue="q"}'] == 3 * generation
        # The exited children's in-flight gauges are gone with them.
        assert not any(name.startswith("forwarder_tasks_in_flight{") for name in values)
        assert values["forwarder_worker_resident_memory_bytes"] > 1_000_000
        assert scrape["files"] == ["counter_0.db", "histogram_0.db"]
