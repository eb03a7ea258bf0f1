"""Step metrics are read from the device once per logging interval: the numbers and the failure on a
non-finite loss are those that reading every step gives."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunehouse.contract.spec import EXIT_FAILED, EXIT_SUCCEEDED

from .conftest import of_type, preference_rows, run_in_process, write_jsonl

INTERVAL = 3


def train_metrics(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {p["step"]: p for p in of_type(events, "metrics") if "train_loss" in p}


@pytest.mark.parametrize("mode", ["sft", "dpo"])
def test_metrics_read_per_interval_equal_the_per_step_reads(
    make_spec: Callable[..., Path], tmp_path: Path, mode: str
) -> None:
    fields: dict[str, Any] = {}
    if mode == "dpo":
        pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(2))
        fields = {"train_mode": "dpo", "train_files": [str(pairs)]}
    hp = {"epochs": 2, "batch_size": 2, "learning_rate": 3e-3}
    runs = {}
    for every in (1, INTERVAL):
        code, events = run_in_process(make_spec(f"every{every}", hp={**hp, "logging_steps": every}, **fields))
        assert code == EXIT_SUCCEEDED, of_type(events, "error")
        runs[every] = train_metrics(events)

    per_step, per_interval = runs[1], runs[INTERVAL]
    total = max(per_step)
    assert sorted(per_step) == list(range(1, total + 1))
    assert sorted(per_interval) == [s for s in range(1, total + 1) if s % INTERVAL == 0 or s == total]
    previous = 0
    for end, metrics in sorted(per_interval.items()):
        window = [per_step[s] for s in range(previous + 1, end + 1)]
        previous = end
        assert metrics["train_loss"] == pytest.approx(sum(m["train_loss"] for m in window) / len(window))
        assert metrics["grad_norm"] == per_step[end]["grad_norm"]
        assert metrics["learning_rate"] == per_step[end]["learning_rate"]
        # The window's accuracy pools its steps' targets: a weighted mean of theirs.
        accuracies = [m["train_token_accuracy"] for m in window]
        assert min(accuracies) <= metrics["train_token_accuracy"] <= max(accuracies)
        for key in ("train_reward_accuracy", "train_reward_margin"):
            if mode == "dpo":
                assert metrics[key] == pytest.approx(sum(m[key] for m in window) / len(window))
            else:
                assert key not in metrics


def test_a_non_finite_loss_fails_with_the_same_diagnosis_when_read_per_interval(
    make_spec: Callable[..., Path],
) -> None:
    reasons = []
    for every in (1, 50):
        spec = make_spec(f"nan{every}", hp={"epochs": 3, "learning_rate": 1e10, "logging_steps": every})
        code, events = run_in_process(spec)
        assert code == EXIT_FAILED
        error = of_type(events, "error")[0]
        assert error["kind"] == "nan"
        # Nothing a non-finite step produced is evaluated, checkpointed or saved.
        assert not of_type(events, "checkpoint") and not of_type(events, "model")
        reasons.append(error["reason"])
    assert reasons[0] == reasons[1]
    assert "at step" in reasons[0] and "learning_rate" in reasons[0]
