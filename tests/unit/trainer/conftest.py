"""Shared fixtures: one tiny model per session and helpers to write datasets and run specs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunehouse.trainer.events import read_events
from tunehouse.trainer.tiny import build_tiny_model

QA_PAIRS = [
    ("What is two plus two?", "Four."),
    ("What color is the sky?", "Blue."),
    ("Name a fruit.", "An apple."),
    ("Say hello.", "Hello there!"),
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def chat_rows(repeats: int = 1) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for _ in range(repeats)
        for q, a in QA_PAIRS
    ]


def text_rows(repeats: int = 1) -> list[dict[str, Any]]:
    return [{"text": f"Question: {q} Answer: {a}"} for _ in range(repeats) for q, a in QA_PAIRS]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tunehouse-tiny")


@pytest.fixture
def make_spec(tmp_path: Path, tiny_model: Path) -> Callable[..., Path]:
    """Write a spec.json for a small SFT run; keyword arguments override top-level fields and
    ``hp`` overrides hyperparameters."""

    def make(name: str = "run", hp: dict[str, Any] | None = None, **fields: Any) -> Path:
        run_dir = tmp_path / name
        run_dir.mkdir(exist_ok=True)
        if "train_files" not in fields:
            fields["train_files"] = [str(write_jsonl(run_dir / "train.jsonl", chat_rows(repeats=2)))]
        spec = {
            "run_id": f"task-{name}",
            "model_path": str(tiny_model),
            "method": "lora",
            "train_mode": "sft",
            "output_dir": str(run_dir / "out"),
            "hyperparameters": {
                "epochs": 1,
                "learning_rate": 1e-3,
                "batch_size": 4,
                "max_seq_len": 128,
                **(hp or {}),
            },
            **fields,
        }
        path = run_dir / "spec.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        return path

    return make


def spawn(spec_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tunehouse.trainer", str(spec_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_trainer(spec_path: Path, timeout: float = 120) -> tuple[int, list[dict[str, Any]]]:
    """Run the real entry point in a subprocess; return (exit code, events from the log file)."""
    proc = spawn(spec_path)
    _, stderr = proc.communicate(timeout=timeout)
    spec = json.loads(spec_path.read_text())
    events = read_events(Path(spec["output_dir"]) / "events.jsonl")
    if proc.returncode not in (0, 1, 2, 3):
        raise AssertionError(f"trainer crashed with {proc.returncode}:\n{stderr}")
    return proc.returncode, events


def run_in_process(spec_path: Path) -> tuple[int, list[dict[str, Any]]]:
    """Same entry function without a new interpreter; saves the torch import for each run."""
    from tunehouse.trainer.__main__ import main

    code = main([str(spec_path)])
    spec = json.loads(spec_path.read_text())
    return code, read_events(Path(spec["output_dir"]) / "events.jsonl")


def of_type(events: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [e["payload"] for e in events if e["type"] == type_]


def preference_rows(repeats: int = 1, style: str = "dashscope") -> list[dict[str, Any]]:
    """A learnable preference: answer the question rather than refuse."""
    rows: list[dict[str, Any]] = []
    for _ in range(repeats):
        for q, a in QA_PAIRS:
            prompt = [{"role": "user", "content": q}]
            if style == "openai":
                rows.append(
                    {
                        "input": {"messages": prompt},
                        "preferred_output": [{"role": "assistant", "content": a}],
                        "non_preferred_output": [{"role": "assistant", "content": "I cannot say."}],
                    }
                )
            else:
                rows.append(
                    {
                        "messages": prompt,
                        "chosen": {"role": "assistant", "content": a},
                        "rejected": "I cannot say.",
                    }
                )
    return rows
