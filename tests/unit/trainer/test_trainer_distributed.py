"""One run on two ranks (torchrun, gloo on the CPU) trains what one process trains on the same global batch.

LoRA runs under DDP, full fine-tuning under FSDP2; checkpoints are DCP state and resume exactly at the
same world size; the output is an ordinary model directory (or adapter) one process loads; a SIGTERM
to one rank stops every rank after one checkpoint; a rank killed ends the run with its reason and
leaves no process behind. The runs are shared per module: each torchrun launch costs seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from tests.unit.trainer.conftest import chat_rows, of_type, run_in_process, write_jsonl
from tunehouse.executors.local import rank_failure, trainer_command
from tunehouse.trainer.events import read_events
from tunehouse.trainer.tiny import build_tiny_model

DEADLINE_S = 600  # generous: two ranks on a busy 2-core machine start slowly


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def model(root: Path) -> Path:
    return build_tiny_model(root / "tunehouse-tiny")


def write_spec(root: Path, model: Path, name: str, method: str, **more: Any) -> Path:
    run = root / name
    run.mkdir()
    # 9 examples, 4 a step: the last step of an epoch has one, so one rank has none and idles.
    rows = chat_rows(repeats=2) + chat_rows()[:1]
    hp = {
        "epochs": 2,
        "learning_rate": 1e-3,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_seq_len": 128,
        "lora_dropout": 0.0,  # dropout masks would differ with the split of the batch
        **more.pop("hp", {}),
    }
    spec = {
        "run_id": name,
        "model_path": str(model),
        "method": method,
        "train_files": [str(write_jsonl(run / "train.jsonl", rows))],
        "output_dir": str(run / "out"),
        "hyperparameters": hp,
        **more,
    }
    path = run / "spec.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def launch(spec: Path, ranks: int = 2) -> subprocess.Popen[str]:
    """The local executor's launch command (torchrun), from the spec's folder."""
    return subprocess.Popen(
        trainer_command(spec, ranks, spec.parent.name),
        cwd=spec.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_ranks(spec: Path) -> list[dict[str, Any]]:
    proc = launch(spec)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, err[-3000:]
    return read_events(spec.parent / "out" / "events.jsonl")


def curve(events: list[dict[str, Any]]) -> list[tuple[int, float, float]]:
    return [
        (m["step"], m["train_loss"], m["grad_norm"]) for m in of_type(events, "metrics") if "grad_norm" in m
    ]


def assert_same_curve(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> None:
    a, b = curve(one), curve(two)
    assert [s for s, _, _ in a] == [s for s, _, _ in b] == list(range(1, 7))
    for (_, loss_a, norm_a), (_, loss_b, norm_b) in zip(a, b, strict=True):
        assert loss_b == pytest.approx(loss_a, rel=1e-4)
        assert norm_b == pytest.approx(norm_a, rel=1e-3)


@pytest.fixture(scope="module")
def lora_runs(root: Path, model: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path, Path]:
    one, two = (write_spec(root, model, f"lora-{n}", "lora") for n in (1, 2))
    _, single = run_in_process(one)
    return single, run_ranks(two), one.parent / "out", two.parent / "out"


@pytest.fixture(scope="module")
def full_runs(root: Path, model: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path, Path]:
    one, two = (write_spec(root, model, f"full-{n}", "full", hp={"save_steps": 3}) for n in (1, 2))
    _, single = run_in_process(one)
    return single, run_ranks(two), one.parent / "out", two.parent / "out"


def test_lora_on_two_ranks_under_ddp_follows_the_single_process_loss_curve(lora_runs: Any) -> None:
    single, ranked, _, _ = lora_runs
    assert any("2 ranks (gloo), DDP" in m["message"] for m in of_type(ranked, "log"))
    assert_same_curve(single, ranked)
    assert of_type(ranked, "status")[-1]["state"] == "succeeded"


def test_full_fine_tuning_on_two_ranks_under_fsdp2_follows_the_single_process_loss_curve(
    full_runs: Any,
) -> None:
    single, ranked, _, _ = full_runs
    assert any("FSDP2 fully_shard on" in m["message"] for m in of_type(ranked, "log"))
    assert_same_curve(single, ranked)
    # Rank 0 alone reports: one event per sequence number, one final status.
    assert [e["seq"] for e in ranked] == list(range(1, len(ranked) + 1))
    assert [s["state"] for s in of_type(ranked, "status")].count("succeeded") == 1


def test_a_two_rank_run_resumes_exactly_from_its_dcp_checkpoint(
    root: Path, model: Path, full_runs: Any
) -> None:
    _, uninterrupted, _, out = full_runs
    ckpt = out / "checkpoints" / "step-3"
    assert (ckpt / "dcp" / ".metadata").is_file() and (ckpt / "rng-1.pt").is_file()
    resumed = run_ranks(write_spec(root, model, "full-resumed", "full", resume_from=str(ckpt)))
    after = [c for c in curve(uninterrupted) if c[0] > 3]
    assert [c[0] for c in curve(resumed)] == [c[0] for c in after] == [4, 5, 6]
    flat = [v for c in curve(resumed) for v in c[1:]]
    assert flat == pytest.approx([v for c in after for v in c[1:]], rel=1e-6)


def generate(path: Path, base: Path | None = None) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(base or path)
    if base is not None:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer("What is two plus two?", return_tensors="pt")
    return loaded.generate(**prompt, max_new_tokens=4, do_sample=False)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (file,) = path.glob("*.safetensors")
    return load_file(file)


def test_the_consolidated_outputs_load_in_one_process_and_generate(
    model: Path, lora_runs: Any, full_runs: Any
) -> None:
    for _, ranked, single_out, ranked_out in (lora_runs, full_runs):
        (saved,) = of_type(ranked, "model")
        assert Path(saved["path"]) == ranked_out / "model"
        one, two = weights(single_out / "model"), weights(ranked_out / "model")
        assert one.keys() <= two.keys()
        for key, tensor in one.items():
            torch.testing.assert_close(two[key], tensor, rtol=1e-3, atol=1e-4)
    lora_out, full_out = lora_runs[3] / "model", full_runs[3] / "model"
    assert generate(lora_out, base=model).shape[-1] > 0
    assert generate(full_out).shape[-1] > 0


def long_run(root: Path, model: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    spec = write_spec(root, model, name, "lora", hp={"epochs": 50, "step_delay": 0.2})
    proc = launch(spec)
    events = spec.parent / "out" / "events.jsonl"
    wait_for(lambda: of_type(read_events(events), "progress"), "the first step")
    return proc, events


def ranks_of(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    ranks = psutil.Process(proc.pid).children()
    assert len(ranks) == 2
    return sorted(ranks, key=lambda p: int(p.environ()["RANK"]))


def test_sigterm_to_one_rank_stops_every_rank_after_one_checkpoint(root: Path, model: Path) -> None:
    proc, events = long_run(root, model, "sigterm")
    ranks = ranks_of(proc)
    ranks[1].send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=DEADLINE_S)
    logged = read_events(events)
    (ckpt,) = of_type(logged, "checkpoint")
    assert (Path(ckpt["path"]) / "dcp" / ".metadata").is_file()
    assert of_type(logged, "status")[-1]["state"] == "stopped"
    failure = rank_failure(err)  # torchrun reports every nonzero exit as a failure
    assert failure is not None and failure.exitcode == 3, err[-3000:]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)


def test_a_rank_killed_ends_the_run_with_its_reason_and_leaves_no_process(root: Path, model: Path) -> None:
    proc, _ = long_run(root, model, "sigkill")
    ranks = ranks_of(proc)
    ranks[1].kill()
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode != 0
    failure = rank_failure(err)
    assert failure is not None and (failure.rank, failure.exitcode) == (1, -9)
    assert "SIGKILL" in failure.detail
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
