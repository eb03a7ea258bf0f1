"""The GPUs this node lends to trainers: each running trainer holds the GPUs it asked for (one by default),
so two runs never share a device. A handle holds its run's GPUs as one comma-joined string ("0,1"), the
value CUDA_VISIBLE_DEVICES takes."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping


def parse_gpus(text: str, source: str = "TUNEHOUSE_GPUS") -> tuple[str, ...]:
    """``"0,1, 3"`` -> ``("0", "1", "3")``; ``"none"`` or ``""`` -> no pinning (runs see every device)."""
    text = text.strip()
    if text.lower() in {"", "none"}:
        return ()
    ids = tuple(part.strip() for part in text.split(","))
    if any(not part for part in ids):
        raise ValueError(f"{source}={text!r}: expected device ids separated by commas, e.g. 0,1,2")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}={text!r} names a device twice")
    return ids


def detect_gpus() -> tuple[str, ...]:
    """The devices this process may use: its own CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists.

    nvidia-smi rather than torch: the server never imports torch, and a CPU-only machine simply has none.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return () if visible.strip() == "-1" else parse_gpus(visible, "CUDA_VISIBLE_DEVICES")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def gpus_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """``TUNEHOUSE_GPUS`` when set (``auto`` detects), else the detected devices."""
    setting = env.get("TUNEHOUSE_GPUS", "auto")
    return detect_gpus() if setting.strip().lower() == "auto" else parse_gpus(setting)


def free_gpus(gpus: Iterable[str], taken: Iterable[str | None]) -> list[str]:
    """The node's GPUs no running trainer holds, in the configured order."""
    held = {g for t in taken if t for g in t.split(",")}
    return [g for g in gpus if g not in held]


def unplaceable(need: int, gpus: tuple[str, ...], cpu_ranks: int) -> str | None:
    """Why a run asking for ``need`` GPUs can never run on this node (None when it can, now or later)."""
    if gpus and need > len(gpus):
        return f"the run asks for {need} GPUs and this node lends {len(gpus)} (TUNEHOUSE_GPUS)"
    if not gpus and need > cpu_ranks:
        return (
            f"the run asks for {need} GPUs and this node lends none; it trains a run on at most "
            f"{cpu_ranks} CPU process(es) (TUNEHOUSE_CPU_RANKS)"
        )
    return None
