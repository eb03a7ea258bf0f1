"""Whole training runs on the tiny model, through the trainer's entry point."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.contract.spec import (
    EXIT_DATA_INVALID,
    EXIT_FAILED,
    EXIT_STOPPED,
    EXIT_SUCCEEDED,
    STOP_REQUEST_FILE,
)
from tunehouse.trainer.events import read_events

from .conftest import chat_rows, of_type, run_in_process, run_trainer, spawn, text_rows, write_jsonl


def train_losses(events: list[dict]) -> list[float]:
    return [p["train_loss"] for p in of_type(events, "metrics") if "train_loss" in p]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # PEFT vs transformers 5
def test_lora_sft_run_end_to_end(make_spec: Callable[..., Path], tiny_model: Path) -> None:
    spec = make_spec(hp={"epochs": 2, "split_ratio": 20, "save_steps": 1})
    code, events = run_trainer(spec)
    assert code == EXIT_SUCCEEDED, of_type(events, "error")

    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    states = [p["state"] for p in of_type(events, "status")]
    assert states == ["loading", "running", "succeeded"]
    progress = of_type(events, "progress")
    assert progress[-1]["percent"] == 100 and progress[-1]["step"] == progress[-1]["total_steps"]
    assert [p["step"] for p in progress] == list(range(1, len(progress) + 1))
    assert any("eval_loss" in p for p in of_type(events, "metrics"))
    checkpoints = of_type(events, "checkpoint")
    assert [c["step"] for c in checkpoints] == [p["step"] for p in progress]
    assert all(Path(c["path"], "metrics.json").is_file() for c in checkpoints)
    model_event = of_type(events, "model")[0]
    assert model_event["kind"] == "lora_adapter" and model_event["base_model_path"] == str(tiny_model)
    assert events[-1]["type"] == "status" and events[-2]["type"] == "model"

    adapter = Path(model_event["path"])
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_full_sft_reduces_training_loss(make_spec: Callable[..., Path]) -> None:
    spec = make_spec(method="full", hp={"epochs": 6, "learning_rate": 3e-3})
    code, events = run_in_process(spec)
    assert code == EXIT_SUCCEEDED
    losses = train_losses(events)
    assert losses[-1] < losses[0] - 1.0, losses
    model_dir = Path(of_type(events, "model")[0]["path"])
    assert of_type(events, "model")[0]["kind"] == "full"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()


def test_pretrain_reduces_training_loss(make_spec: Callable[..., Path], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "text.jsonl", text_rows(repeats=2))
    spec = make_spec(
        method="full", train_mode="pretrain", train_files=[str(data)], hp={"epochs": 6, "learning_rate": 3e-3}
    )
    code, events = run_in_process(spec)
    assert code == EXIT_SUCCEEDED
    losses = train_losses(events)
    assert losses[-1] < losses[0] - 1.0, losses


def test_invalid_data_exits_2_before_loading_the_model(
    make_spec: Callable[..., Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows()[0]) + "\n{oops\n", encoding="utf-8")
    code, events = run_in_process(make_spec(train_files=[str(bad)]))
    assert code == EXIT_DATA_INVALID
    error = of_type(events, "error")[0]
    assert error["kind"] == "data" and "bad.jsonl: line 2: json" in error["reason"]
    assert not of_type(events, "log")  # nothing was loaded or tokenized
    assert [p["state"] for p in of_type(events, "status")] == ["loading", "failed"]


def test_format_not_allowed_for_train_mode_is_a_data_error(
    make_spec: Callable[..., Path], tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "text.jsonl", text_rows())
    code, events = run_in_process(make_spec(train_files=[str(data)]))  # sft on plain text
    assert code == EXIT_DATA_INVALID
    assert "format text" in of_type(events, "error")[0]["reason"]


def test_exploding_learning_rate_fails_with_nan_error(make_spec: Callable[..., Path]) -> None:
    code, events = run_in_process(make_spec(hp={"epochs": 3, "learning_rate": 1e10}))
    assert code == EXIT_FAILED
    error = of_type(events, "error")[0]
    assert error["kind"] == "nan"
    assert (
        "at step" in error["reason"] and "learning_rate" in error["reason"] and "float32" in error["reason"]
    )


def test_sigterm_stops_with_checkpoint_then_resume_finishes(make_spec: Callable[..., Path]) -> None:
    spec_path = make_spec(hp={"epochs": 20, "step_delay": 0.3})
    events_path = Path(json.loads(spec_path.read_text())["output_dir"]) / "events.jsonl"
    proc = spawn(spec_path)
    deadline = time.monotonic() + 60
    while not any(e["type"] == "progress" and e["payload"]["step"] >= 2 for e in read_events(events_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "trainer never reached step 2"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_STOPPED  # a deadline, not a speed claim: it stops at the next step

    stopped = read_events(events_path)
    assert stopped[-1]["payload"] == {"state": "stopped"} and stopped[-2]["type"] == "checkpoint"
    checkpoint = stopped[-2]["payload"]
    assert checkpoint["step"] < of_type(stopped, "progress")[0]["total_steps"]

    spec = json.loads(spec_path.read_text())
    spec["resume_from"] = checkpoint["path"]
    spec["hyperparameters"]["step_delay"] = 0
    spec_path.write_text(json.dumps(spec))
    code, events = run_in_process(spec_path)
    assert code == EXIT_SUCCEEDED
    resumed = events[len(stopped) :]
    assert resumed[0]["seq"] == stopped[-1]["seq"] + 1  # numbering continues in the same log
    assert of_type(resumed, "progress")[0]["step"] == checkpoint["step"] + 1
    assert of_type(resumed, "progress")[-1]["percent"] == 100


def test_resume_reproduces_an_uninterrupted_run_exactly(make_spec: Callable[..., Path]) -> None:
    hp = {"epochs": 2, "save_steps": 1, "lora_dropout": 0.2, "warmup_ratio": 0.25}
    code, straight = run_in_process(make_spec("straight", hp=hp))
    assert code == EXIT_SUCCEEDED
    first_checkpoint = of_type(straight, "checkpoint")[0]["path"]

    code, resumed = run_in_process(make_spec("resumed", hp=hp, resume_from=first_checkpoint))
    assert code == EXIT_SUCCEEDED
    assert train_losses(resumed) == train_losses(straight)[1:]
    a = load_file(Path(of_type(straight, "model")[0]["path"], "adapter_model.safetensors"))
    b = load_file(Path(of_type(resumed, "model")[0]["path"], "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unreadable_spec_fails_with_error_event(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"run_id": "x", "output_dir": str(tmp_path / "out")}), encoding="utf-8")
    code, events = run_in_process(spec)
    assert code == EXIT_FAILED
    assert (
        of_type(events, "error")[0]["kind"] == "runtime"
        and "model_path" in of_type(events, "error")[0]["reason"]
    )


def test_a_stop_request_file_stops_with_a_checkpoint_like_sigterm(make_spec: Callable[..., Path]) -> None:
    # How an executor whose engine kills soon after its own stop signal (Ray: 3 s) asks for a checkpoint.
    spec_path = make_spec(hp={"epochs": 20, "step_delay": 0.3})
    output_dir = Path(json.loads(spec_path.read_text())["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STOP_REQUEST_FILE).write_text("left by an earlier attempt\n")  # stale: ignored
    events_path = output_dir / "events.jsonl"
    proc = spawn(spec_path)
    deadline = time.monotonic() + 60
    while not any(e["type"] == "progress" and e["payload"]["step"] >= 2 for e in read_events(events_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "trainer never reached step 2"
        time.sleep(0.1)
    (output_dir / STOP_REQUEST_FILE).write_text("stop\n")
    assert proc.wait(timeout=120) == EXIT_STOPPED
    stopped = read_events(events_path)
    assert stopped[-1]["payload"] == {"state": "stopped"} and stopped[-2]["type"] == "checkpoint"
    assert stopped[-2]["payload"]["step"] >= 2
