"""Out-of-memory retries: half the micro-batch, once, with the failed attempt's memory freed first."""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tunehouse.trainer.evaluation import Evaluator
from tunehouse.trainer.loop import with_oom_retry
from tunehouse.trainer.memory import NoGradRetry
from tunehouse.trainer.objectives import DpoObjective, SftObjective
from tunehouse.trainer.spec import EXIT_SUCCEEDED

from .conftest import of_type, preference_rows, run_in_process, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def train_losses(events: list[dict]) -> list[float]:
    return [p["train_loss"] for p in of_type(events, "metrics") if "train_loss" in p]


def test_oom_retry_halves_the_micro_batch_once() -> None:
    calls: list[int] = []
    retries: list[int] = []

    def step(micro: int) -> str:
        calls.append(micro)
        if micro > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"ok@{micro}"

    assert with_oom_retry(step, 4, retries.append) == ("ok@2", 2)
    assert calls == [4, 2] and retries == [2]
    with pytest.raises(torch.OutOfMemoryError):
        with_oom_retry(step, 8, lambda smaller: None)  # 8 -> 4 still fails: only one retry
    retries.clear()
    with pytest.raises(torch.OutOfMemoryError):
        with_oom_retry(lambda micro: step(micro + 2), 1, retries.append)
    assert retries == []  # a micro-batch of one cannot shrink


def test_no_grad_passes_keep_the_smaller_micro_batch_but_never_exceed_training() -> None:
    logged: list[str] = []
    retry = NoGradRetry(logged.append)
    calls: list[int] = []

    def work(micro: int) -> int:
        calls.append(micro)
        if micro > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return micro

    assert retry.run("evaluation", work, 4) == 2
    assert retry.run("evaluation", work, 4) == 2  # starts at the size that worked
    assert retry.run("evaluation", work, 1) == 1  # training shrank below it: follow training
    assert calls == [4, 2, 2, 1]
    assert logged == ["out of memory during evaluation: retrying with micro-batch 2 (was 4)"]


def test_oom_during_a_run_retries_and_says_so(
    make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = SftObjective.step
    seen: list[int] = []

    def flaky_step(self: SftObjective, model, examples, indices, micro: int):
        seen.append(micro)
        if micro == 4:  # fault injection: the first attempt runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_step(self, model, examples, indices, micro)

    monkeypatch.setattr(SftObjective, "step", flaky_step)
    code, events = run_in_process(make_spec(hp={"epochs": 2, "save_steps": 1}))
    assert code == EXIT_SUCCEEDED, of_type(events, "error")
    assert seen == [4, 2, 2, 2, 2]  # retried once, then the smaller micro-batch sticks
    message = next(m["message"] for m in of_type(events, "log") if "out of memory" in m["message"])
    assert "micro-batch 2 (was 4)" in message and "gradient accumulation 2 (was 1)" in message
    state = json.loads(Path(of_type(events, "checkpoint")[-1]["path"], "trainer_state.json").read_text())
    assert state["micro_batch_size"] == 2


def eval_metrics(events: list[dict]) -> list[dict]:
    return [p for p in of_type(events, "metrics") if "eval_loss" in p]


def test_oom_during_evaluation_retries_smaller_without_changing_the_result(
    make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    hp = {"epochs": 2, "split_ratio": 25, "eval_steps": 1, "lora_dropout": 0}
    code, clean = run_in_process(make_spec("eval-clean", hp=hp))
    assert code == EXIT_SUCCEEDED
    real_pass = Evaluator.evaluation_pass
    seen: list[int] = []

    def flaky_pass(self: Evaluator, model, micro: int):
        seen.append(micro)
        if micro == 4:  # fault injection: evaluation at the training micro-batch runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_pass(self, model, micro)

    monkeypatch.setattr(Evaluator, "evaluation_pass", flaky_pass)
    code, retried = run_in_process(make_spec("eval-oom", hp=hp))
    assert code == EXIT_SUCCEEDED, of_type(retried, "error")
    assert seen[:2] == [4, 2] and set(seen[2:]) == {2}  # later evaluations keep the smaller size
    messages = [m["message"] for m in of_type(retried, "log") if "out of memory" in m["message"]]
    assert messages == ["out of memory during evaluation: retrying with micro-batch 2 (was 4)"]
    assert train_losses(retried) == train_losses(clean)  # training kept its own micro-batch
    for a, b in zip(eval_metrics(retried), eval_metrics(clean), strict=True):
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-5)
        assert a["eval_token_accuracy"] == b["eval_token_accuracy"]


def test_oom_in_the_dpo_reference_pass_retries_smaller(
    make_spec: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(repeats=2))
    fields = {"method": "full", "train_mode": "dpo", "train_files": [str(data)]}
    hp = {"epochs": 1, "learning_rate": 1e-3}
    code, clean = run_in_process(make_spec("ref-clean", hp=hp, **fields))
    assert code == EXIT_SUCCEEDED
    real_pass = DpoObjective.reference_pass

    def flaky_pass(self: DpoObjective, model, splits, micro: int):
        if micro == 4:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_pass(self, model, splits, micro)

    monkeypatch.setattr(DpoObjective, "reference_pass", flaky_pass)
    code, retried = run_in_process(make_spec("ref-oom", hp=hp, **fields))
    assert code == EXIT_SUCCEEDED, of_type(retried, "error")
    assert any(
        m["message"] == "out of memory during the DPO reference pass: retrying with micro-batch 2 (was 4)"
        for m in of_type(retried, "log")
    )
    assert train_losses(retried) == pytest.approx(train_losses(clean), rel=1e-5)


def test_a_failed_training_attempt_is_freed_before_the_retry(
    make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = SftObjective.step
    failed: list[weakref.ref[torch.Tensor]] = []
    alive_at_retry: list[bool] = []

    def step_that_fills_memory(self: SftObjective, model, examples, indices, micro: int):
        if micro == 4:  # a forward with its autograd graph, then out of memory
            logits = self.forward.logits(model, self.forward.batch(examples))
            failed.append(weakref.ref(logits))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if not alive_at_retry:
            alive_at_retry.append(failed[0]() is not None)
        return real_step(self, model, examples, indices, micro)

    monkeypatch.setattr(SftObjective, "step", step_that_fills_memory)
    code, events = run_in_process(make_spec(hp={"epochs": 1}))
    assert code == EXIT_SUCCEEDED, of_type(events, "error")
    assert alive_at_retry == [False]


def test_a_failed_no_grad_pass_is_freed_before_the_retry(
    make_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pass = Evaluator.evaluation_pass
    failed: list[weakref.ref[torch.Tensor]] = []
    alive_at_retry: list[bool] = []

    def pass_that_fills_memory(self: Evaluator, model, micro: int):
        if micro == 4:
            with torch.no_grad():
                forward = self.objective.forward
                logits = forward.logits(model, forward.batch(self.items))
            failed.append(weakref.ref(logits))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if not alive_at_retry:
            alive_at_retry.append(failed[0]() is not None)
        return real_pass(self, model, micro)

    monkeypatch.setattr(Evaluator, "evaluation_pass", pass_that_fills_memory)
    code, events = run_in_process(make_spec(hp={"epochs": 1, "split_ratio": 50, "eval_steps": 1}))
    assert code == EXIT_SUCCEEDED, of_type(events, "error")
    assert alive_at_retry == [False]
