"""No surprise network: a scan of a cached model with HF_HUB_OFFLINE=1 opens no socket at all.

The cache is filled from the local test Hub, which is then stopped. The scan runs in a fresh
process whose stdlib `socket.socket.connect` (and `connect_ex`, `getaddrinfo`) record every call
and refuse any address that is not loopback; the test checks that none was even attempted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import llama_tensors, run_cli_process, write_shards
from tests.hub_server import HubServer

pytestmark = pytest.mark.slow  # spawns processes

REPO = "acme/offline"

# Run before llm_audit (and so before huggingface_hub) is imported in the child.
PRELUDE = """
import ipaddress, os, socket, sys
LOG = os.environ["SOCKET_LOG"]

def _note(kind, address):
    with open(LOG, "a") as fh:
        fh.write(f"{kind} {address!r}\\n")

def _loopback(address):
    host = address[0] if isinstance(address, tuple) else address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or isinstance(address, (str, bytes))  # AF_UNIX paths

def _guard(original, kind):
    def guarded(self, address, *args):
        _note(kind, address)
        if not _loopback(address):
            raise OSError(f"llm-audit test: network access to {address!r} refused")
        return original(self, address, *args)
    return guarded

socket.socket.connect = _guard(socket.socket.connect, "connect")
socket.socket.connect_ex = _guard(socket.socket.connect_ex, "connect_ex")
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    _note("getaddrinfo", host)
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo

from llm_audit.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_offline_scan_of_a_cached_model_opens_no_socket(tmp_path: Path) -> None:
    served = write_shards(
        tmp_path / "served", llama_tensors(blocks=2, seed=5), config={"model_type": "llama"}
    )
    cache = tmp_path / "cache"
    env = {
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf-home"),
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    with HubServer({REPO: served}) as hub:
        online = {**env, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}
        code, _, err = run_cli_process(
            "describe", REPO, env=online
        )  # fills the cache, reads no weights
        assert code == 0, err
    log = tmp_path / "sockets.log"
    offline = {
        **os.environ,
        **env,
        "HF_ENDPOINT": hub.endpoint,  # stopped: a connection would be refused anyway
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "SOCKET_LOG": str(log),
    }
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE, "scan", REPO, "--out", str(out), "--no-progress",
         "--format", "json"],
        capture_output=True, text=True, env=offline, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "audit.json").read_text())["model"]["id"] == REPO
    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"sockets used while offline:\n{attempts}"


def test_the_guard_does_refuse_a_non_loopback_connection(tmp_path: Path) -> None:
    """The control: the prelude's guard fires (so a silent pass above means no attempt)."""
    log = tmp_path / "sockets.log"
    probe = PRELUDE.split("from llm_audit.cli import main")[0] + (
        "s = socket.socket()\n"
        "try:\n    s.connect(('203.0.113.1', 80))\nexcept OSError as e:\n    print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "SOCKET_LOG": str(log)},
        timeout=60,
    )
    assert "network access to ('203.0.113.1', 80) refused" in proc.stdout, proc.stderr
    assert "connect ('203.0.113.1', 80)" in log.read_text()
