"""A served process moves what start-up built out of the cyclic collector's way; an app made in a process
that makes many (tests) leaves the collector alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A fresh interpreter: the answer is the collector's state of the whole process.
START_AND_COUNT = """
import gc, sys
from fastapi.testclient import TestClient
from tunehouse.api import app as api

app = api.app_from_env() if sys.argv[1] == "served" else api.create_app()
with TestClient(app) as client:
    assert client.get("/healthz").status_code == 200
    print(gc.get_freeze_count())
"""


def frozen_after_start(tmp_path: Path, how: str) -> int:
    env = {"TUNEHOUSE_HOME": str(tmp_path / "home"), "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", START_AND_COUNT, how], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.split()[-1])


def test_the_served_app_freezes_its_start_up_heap(tmp_path: Path) -> None:
    assert frozen_after_start(tmp_path, "served") > 10_000


def test_an_app_made_by_hand_leaves_the_collector_alone(tmp_path: Path) -> None:
    assert frozen_after_start(tmp_path, "made") == 0
