"""Which engine a new deployment gets: vLLM where it can run (importable from its interpreter and a GPU
present), or as TUNEHOUSE_SERVING_ENGINE says; otherwise transformers + PEFT.

The probe runs the vLLM interpreter without importing vllm there (`importlib.util.find_spec`), and never
imports it here: the server stays free of vllm and torch.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping

from tunehouse.executors.gpus import detect_gpus
from tunehouse.serving.vllm_engine import vllm_python

CHOICES = ("vllm", "transformers")
_FIND_VLLM = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm') else 3)"


@functools.cache
def vllm_importable(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", _FIND_VLLM], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def choose_engine(env: Mapping[str, str] = os.environ) -> str:
    setting = env.get("TUNEHOUSE_SERVING_ENGINE", "auto").strip().lower()
    if setting in CHOICES:
        return setting
    if setting not in ("", "auto"):
        raise ValueError(
            f"TUNEHOUSE_SERVING_ENGINE={setting!r}: expected one of auto, {', '.join(CHOICES)}"
        )
    if detect_gpus() and vllm_importable(vllm_python(env)):
        return "vllm"
    return "transformers"


@functools.cache
def default_engine() -> str:
    """This server's choice, made once: the environment does not change while it runs."""
    return choose_engine()
