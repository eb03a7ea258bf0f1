"""The API server process stays light: torch and transformers belong to the trainer and serving processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for

HEAVY = ("torch", "transformers", "peft", "accelerate", "safetensors")


def test_importing_and_creating_the_app_loads_no_ml_library(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import tunehouse.cli\n"
        "from tunehouse.api.app import create_app\n"
        "create_app()\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "TUNEHOUSE_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == ""


@pytest.fixture
def bare_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A fresh home without the tiny model: the server must have it built on first use."""
    home = tmp_path / "home"
    home.mkdir()
    srv = LiveServer(home=home, database_url=f"sqlite:///{home / 'tunehouse.db'}")
    srv.start()
    yield srv
    srv.stop()
    kill_trainers(home)


def test_the_server_never_maps_libtorch_even_after_building_and_training_the_tiny_model(
    bare_server: LiveServer,
) -> None:
    client = OpenAI(base_url=bare_server.url + "/v1", api_key=bare_server.keys("light")["api_key"])
    training = client.files.create(file=("t.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tunehouse-tiny",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    done = wait_for(
        lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status in ("succeeded", "failed") and j,
        timeout=600,
    )
    assert done.status == "succeeded", done.error
    assert (bare_server.home / "models" / "tunehouse-tiny" / "model.safetensors").is_file()
    assert bare_server.proc is not None
    maps = Path(f"/proc/{bare_server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps
