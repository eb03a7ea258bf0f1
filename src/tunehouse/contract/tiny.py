"""Where the built-in tiny model lives, and how the server gets it built without loading torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tunehouse.contract.hyperparameters import TINY_MODEL

TINY_MODEL_NAME = TINY_MODEL
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def is_complete_model(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED_FILES)


def ensure_tiny_model(home: Path, timeout_s: float = 600) -> Path:
    """The tiny model under `home`, built first if missing, in a child process: building it needs torch and
    transformers, which the API server must never load (they cost it hundreds of MB and libtorch)."""
    dest = Path(home) / "models" / TINY_MODEL_NAME
    if not is_complete_model(dest):
        done = subprocess.run(
            [sys.executable, "-m", "tunehouse.trainer.tiny", str(dest)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            raise RuntimeError(f"building {TINY_MODEL_NAME} failed: {done.stderr.strip()[-2000:]}")
    return dest
