"""mTLS key files never outlive their process, even one killed outright.

Real processes write their certificate folders (in /dev/shm where there is one) through
``ClientCerts``; one is SIGKILLed, so no exit handler runs; the next ``ClientCerts`` built (as a
worker's start builds its callback hook) removes the dead one's folder and no other.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from forwarder.hooks.client_certs import ClientCerts

KEY = "-----BEGIN PRIVATE KEY-----\nMIIEshmZq81\n-----END PRIVATE KEY-----\n"
HOLDER = f"""
import os, sys, time
from forwarder.config.hooks import MtlsAuth
from forwarder.hooks.client_certs import ClientCerts

certs = ClientCerts()
with certs.files(MtlsAuth(cert="-----BEGIN CERTIFICATE-----x", key={KEY!r})) as (cert, key):
    print(os.path.dirname(key), flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        child.kill()
        child.wait(timeout=10)


def _holder(started: list[subprocess.Popen[str]]) -> Path:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    started.append(child)
    assert child.stdout is not None
    folder = Path(child.stdout.readline().strip())
    assert folder.is_dir(), f"the holder wrote no folder (exit {child.poll()})"
    assert KEY in "".join(path.read_text() for path in folder.glob("*.key"))
    return folder


@pytest.mark.timeout(60)
def test_a_killed_process_s_key_files_are_removed_at_the_next_start(
    holders: list[subprocess.Popen[str]],
) -> None:
    killed, alive = _holder(holders), _holder(holders)
    holders[0].send_signal(signal.SIGKILL)
    holders[0].wait(timeout=10)
    assert killed.is_dir(), "SIGKILL ran no exit handler: the folder is still there"
    ClientCerts()
    assert not killed.exists(), "the dead process's private key is still on disk"
    assert alive.is_dir(), "a live process's folder was removed"
    assert list(alive.glob("*.key"))
