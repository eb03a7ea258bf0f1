"""The objective per train mode: which one a run gets, DPO's reference choice, and its eval metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import torch

from tunehouse.trainer.evaluation import EvalSums
from tunehouse.trainer.forward import Forward
from tunehouse.trainer.objectives import (
    OBJECTIVES,
    DpoObjective,
    PretrainObjective,
    SftObjective,
    dpo_reference_mode,
)
from tunehouse.trainer.spec import RunSpec, TrainMode

CPU = torch.device("cpu")


def spec(tmp_path: Path, **fields: Any) -> RunSpec:
    return RunSpec.model_validate(
        {"run_id": "r", "model_path": tmp_path, "train_files": [tmp_path / "t.jsonl"], "output_dir": tmp_path}
        | fields
    )


def test_every_train_mode_has_an_objective_and_pretraining_is_the_sft_step_on_text() -> None:
    assert set(OBJECTIVES) == set(get_args(TrainMode))
    assert OBJECTIVES["pretrain"] is PretrainObjective and issubclass(PretrainObjective, SftObjective)
    assert PretrainObjective.step is SftObjective.step
    assert PretrainObjective.eval_chunk is SftObjective.eval_chunk
    assert PretrainObjective.length_policy == "split into chunks"
    assert SftObjective.length_policy == "truncated at the end"
    assert OBJECTIVES["dpo"].pairs and not OBJECTIVES["sft"].pairs


@pytest.mark.parametrize(
    ("method", "init_kind", "expected"),
    [
        ("lora", None, "adapter_off"),  # a fresh adapter: the base under it is the reference
        ("lora", "full", "adapter_off"),  # a fresh adapter on other full weights: the same
        ("lora", "lora_adapter", "precomputed"),  # the adapter already moved the policy
        ("full", None, "precomputed"),  # nothing to switch off
    ],
)
def test_dpo_reference_is_the_starting_policy(
    tmp_path: Path, method: str, init_kind: str | None, expected: str
) -> None:
    init = {"init_from": {"path": str(tmp_path), "kind": init_kind}} if init_kind else {}
    run = spec(tmp_path, method=method, train_mode="dpo", **init)
    assert dpo_reference_mode(run) == expected
    forward = Forward(CPU, False, False, False, 0, 64)
    objective = DpoObjective.create(run, forward)
    assert objective.checkpoint_files() == ({"reference_logps.pt": {}} if expected == "precomputed" else None)


def test_dpo_eval_metrics_are_ratios_of_the_sums() -> None:
    objective = DpoObjective(Forward(CPU, False, False, False, 0, 64), 0.1, "adapter_off")
    sums = EvalSums(loss_sum=1.5, units=3, tokens=10, correct=4, values={"margin": [0.5, -0.25, 1.0]})
    assert objective.eval_metrics(sums) == pytest.approx(
        {
            "eval_loss": 0.5,
            "eval_token_accuracy": 0.4,
            "eval_reward_accuracy": 2 / 3,
            "eval_reward_margin": 1.25 / 3,
        }
    )
    assert list(objective.eval_metrics(sums)) == [
        "eval_loss",
        "eval_token_accuracy",
        "eval_reward_accuracy",
        "eval_reward_margin",
    ]
