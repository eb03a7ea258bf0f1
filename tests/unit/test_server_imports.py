"""The API server never loads the trainer's code, torch or transformers: it stays small and CUDA-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: other tests in this process may have imported the trainer already.
SERVE_AND_LOOK = """
import sys
from fastapi.testclient import TestClient
from tunehouse.api.app import create_app

with TestClient(create_app()) as client:
    assert client.get("/healthz").status_code == 200
    client.get("/console/login")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "vllm")
                or m == "tunehouse.trainer" or m.startswith("tunehouse.trainer."))
print(loaded)
sys.exit(1 if loaded else 0)
"""


def test_serving_the_app_loads_no_trainer_torch_or_transformers_module(tmp_path: Path) -> None:
    env = {"TUNEHOUSE_HOME": str(tmp_path / "home"), "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_LOOK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
