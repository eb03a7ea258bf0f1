"""`tunehouse worker` processes beside a live API-only server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer


def start_api_only(tmp: Path, tiny_model: Path, database_url: str, workers: int = 2) -> LiveServer:
    """`serve --no-scheduler --workers N` on PostgreSQL: API processes that record runs but train none."""
    home = tmp / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(tiny_model, home / "models" / "tunehouse-tiny")
    serve_args = ["--no-scheduler", "--workers", str(workers)]
    srv = LiveServer(home=home, database_url=database_url, serve_args=serve_args)
    srv.start()
    return srv


def start_worker(server: LiveServer, node: str) -> subprocess.Popen[bytes]:
    """`tunehouse worker` on the server's home and database, one trainer at a time, under its own node id."""
    log = open(server.home / f"worker-{node}.log", "ab")  # noqa: SIM115 - the worker process owns it
    env = {**server.env, "TUNEHOUSE_NODE_ID": node, "TUNEHOUSE_MAX_RUNNING": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tunehouse", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
