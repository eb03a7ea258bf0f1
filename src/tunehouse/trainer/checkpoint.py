"""Checkpoints that allow an exact resume: weights, optimizer, scheduler, RNG and data position."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.json"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    epoch: int = 0  # 0-based epoch the next batch belongs to
    batch_index: int = 0  # next batch within that epoch
    order: list[int] = field(default_factory=list)  # shuffled example order of the current epoch
    total_steps: int = 0
    steps_per_epoch: int = 0
    train_examples: int = 0
    method: str = ""
    run_id: str = ""


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(ckpt: Path) -> None:
    state = torch.load(ckpt / "rng.pt", weights_only=False)
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    dest: Path,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    metrics: dict[str, float],
) -> Path:
    """Write the checkpoint next to ``dest`` and rename it into place, so readers never see half."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    # save_pretrained writes only the adapter for a PEFT model, so the checkpoint is also a
    # loadable model/adapter in its own right.
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
    (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)  # a stale checkpoint of the same step from an earlier, abandoned attempt
    os.rename(tmp, dest)
    return dest


def load_state(ckpt: Path) -> TrainState:
    return TrainState(**json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")))


def is_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / "optimizer.pt").is_file()


def is_lora_checkpoint(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()
