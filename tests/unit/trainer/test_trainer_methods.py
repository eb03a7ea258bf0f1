"""DPO, gradient accumulation, incremental training, rotation and outputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.trainer.spec import EXIT_DATA_INVALID, EXIT_SUCCEEDED
from tunehouse.trainer.tensorboard import read_scalars

from .conftest import chat_rows, of_type, preference_rows, run_in_process, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def train_losses(events: list[dict]) -> list[float]:
    return [p["train_loss"] for p in of_type(events, "metrics") if "train_loss" in p]


def generate(model, tokenizer) -> torch.Tensor:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hello."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    return out


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_learns_the_preference(make_spec: Callable[..., Path], tmp_path: Path, method: str) -> None:
    data = write_jsonl(
        tmp_path / "pairs.jsonl", preference_rows(repeats=1) + preference_rows(1, style="openai")
    )
    lr = 5e-3 if method == "lora" else 1e-3
    spec = make_spec(
        f"dpo-{method}",
        method=method,
        train_mode="dpo",
        train_files=[str(data)],
        hp={"epochs": 6, "learning_rate": lr, "dpo_beta": 0.5, "lora_dropout": 0, "split_ratio": 20},
    )
    code, events = run_in_process(spec)
    assert code == EXIT_SUCCEEDED, of_type(events, "error")
    losses = train_losses(events)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the first step
    assert losses[-1] < 0.3, losses
    last = [p for p in of_type(events, "metrics") if "train_reward_accuracy" in p][-1]
    assert last["train_reward_accuracy"] == 1.0 and last["train_reward_margin"] > 0
    assert any("eval_reward_accuracy" in p for p in of_type(events, "metrics"))
    reference = "adapter_off" if method == "lora" else "precomputed"
    assert any(f"reference {reference}" in m["message"] for m in of_type(events, "log"))
    assert of_type(events, "model")[0]["kind"] == ("lora_adapter" if method == "lora" else "full")


def test_dpo_rejects_sft_data_before_loading(make_spec: Callable[..., Path]) -> None:
    code, events = run_in_process(make_spec(train_mode="dpo"))  # the default chat rows
    assert code == EXIT_DATA_INVALID
    assert "format chat" in of_type(events, "error")[0]["reason"]


def test_full_dpo_resume_reuses_the_stored_reference(make_spec: Callable[..., Path], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(repeats=2))
    hp = {"epochs": 2, "learning_rate": 1e-3, "save_steps": 1}
    fields = {"method": "full", "train_mode": "dpo", "train_files": [str(data)]}
    code, straight = run_in_process(make_spec("dpo-straight", hp=hp, **fields))
    assert code == EXIT_SUCCEEDED
    first = of_type(straight, "checkpoint")[0]["path"]
    assert Path(first, "reference_logps.pt").is_file()
    code, resumed = run_in_process(make_spec("dpo-resumed", hp=hp, resume_from=first, **fields))
    assert code == EXIT_SUCCEEDED
    assert train_losses(resumed) == train_losses(straight)[1:]


def test_gradient_accumulation_matches_one_big_batch(make_spec: Callable[..., Path]) -> None:
    common = {"epochs": 2, "lora_dropout": 0, "learning_rate": 3e-3}
    code, big = run_in_process(make_spec("big", hp={**common, "batch_size": 4}))
    assert code == EXIT_SUCCEEDED
    code, accum = run_in_process(
        make_spec("accum", hp={**common, "batch_size": 2, "gradient_accumulation_steps": 2})
    )
    assert code == EXIT_SUCCEEDED
    assert len(train_losses(big)) == len(train_losses(accum)) == 4
    assert train_losses(accum) == pytest.approx(train_losses(big), rel=1e-4)


def test_resume_is_exact_with_packing_and_accumulation(
    make_spec: Callable[..., Path], tmp_path: Path
) -> None:
    rows = chat_rows(repeats=3)
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    hp = {
        "epochs": 2,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "save_steps": 2,
        "lora_dropout": 0.2,
        "gradient_checkpointing": True,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.2,
    }
    code, straight = run_in_process(make_spec("straight", hp=hp, train_files=[str(data)]))
    assert code == EXIT_SUCCEEDED
    checkpoint = of_type(straight, "checkpoint")[0]
    assert checkpoint["step"] == 2
    code, resumed = run_in_process(
        make_spec("resumed", hp=hp, train_files=[str(data)], resume_from=checkpoint["path"])
    )
    assert code == EXIT_SUCCEEDED
    assert train_losses(resumed) == train_losses(straight)[2:]
    a = load_file(Path(of_type(straight, "model")[0]["path"], "adapter_model.safetensors"))
    b = load_file(Path(of_type(resumed, "model")[0]["path"], "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokens = [of_type(e, "model")[0]["trained_tokens"] for e in (straight, resumed)]
    assert tokens[0] == tokens[1] == of_type(straight, "progress")[-1]["trained_tokens"] > 0


def test_rotation_keeps_last_k_and_the_best(make_spec: Callable[..., Path]) -> None:
    spec = make_spec(
        hp={"epochs": 4, "save_steps": 1, "save_total_limit": 1, "split_ratio": 20, "learning_rate": 3e-2}
    )
    code, events = run_in_process(spec)
    assert code == EXIT_SUCCEEDED
    checkpoints = of_type(events, "checkpoint")
    deleted = of_type(events, "checkpoint_deleted")
    assert all(isinstance(c["best"], bool) and "eval_loss" in c["metrics"] for c in checkpoints)
    losses = {c["step"]: c["metrics"]["eval_loss"] for c in checkpoints}
    best = min(losses, key=lambda s: (losses[s], s))
    assert [c["step"] for c in checkpoints if c["best"]][-1] == best
    on_disk = sorted(int(p.name.removeprefix("step-")) for p in Path(checkpoints[0]["path"]).parent.iterdir())
    assert on_disk == sorted({best, checkpoints[-1]["step"]})
    assert {d["step"] for d in deleted} == set(losses) - set(on_disk)
    assert all(not Path(d["path"]).exists() for d in deleted)


def test_metrics_reach_events_and_tensorboard(make_spec: Callable[..., Path]) -> None:
    spec = make_spec(hp={"epochs": 2, "split_ratio": 20, "eval_steps": 1, "logging_steps": 1})
    code, events = run_in_process(spec)
    assert code == EXIT_SUCCEEDED
    train = [p for p in of_type(events, "metrics") if "train_loss" in p]
    assert all(
        {"tokens_per_second", "padding_share", "learning_rate", "grad_norm"} <= p.keys() for p in train
    )
    progress = of_type(events, "progress")
    assert all({"trained_tokens", "padding_share", "eta_seconds"} <= p.keys() for p in progress)
    assert [p["trained_tokens"] for p in progress] == sorted(p["trained_tokens"] for p in progress)
    out = Path(json.loads(spec.read_text())["output_dir"])
    scalars = read_scalars(out / "tensorboard")
    assert [v for _, v in scalars["train/train_loss"]] == pytest.approx([p["train_loss"] for p in train])
    assert [s for s, _ in scalars["eval/eval_loss"]] == [
        p["step"] for p in of_type(events, "metrics") if "eval_loss" in p
    ]
    assert "eval/eval_token_accuracy" in scalars and "train/tokens_per_second" in scalars


def test_merged_adapter_matches_adapter_on_base(make_spec: Callable[..., Path], tiny_model: Path) -> None:
    code, events = run_in_process(make_spec(hp={"epochs": 2, "merge_adapter": True, "learning_rate": 1e-2}))
    assert code == EXIT_SUCCEEDED
    model_event = of_type(events, "model")[0]
    merged_path = Path(model_event["merged_path"])
    assert merged_path.name == "model-merged" and (merged_path / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(merged_path)
    merged = AutoModelForCausalLM.from_pretrained(merged_path).eval()
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), model_event["path"]
    ).eval()
    ids = torch.tensor([tokenizer("Say hello.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-4)
    assert torch.equal(generate(merged, tokenizer), generate(adapted, tokenizer))


def test_init_from_checkpoint_and_models(make_spec: Callable[..., Path], tiny_model: Path) -> None:
    hp = {"epochs": 3, "learning_rate": 1e-2, "save_steps": 1, "lora_dropout": 0}
    code, first = run_in_process(make_spec("first", hp=hp))
    assert code == EXIT_SUCCEEDED
    checkpoint = of_type(first, "checkpoint")[-1]["path"]

    # Continue the adapter from a checkpoint: it starts where the first run ended, optimizer fresh.
    init = {"path": checkpoint, "kind": "lora_adapter", "source": "model:x"}  # extra keys are ignored
    code, more = run_in_process(make_spec("more", hp=hp, init_from=init))
    assert code == EXIT_SUCCEEDED, of_type(more, "error")
    assert train_losses(more)[0] < train_losses(first)[0] - 0.3
    assert of_type(more, "progress")[0]["step"] == 1

    # The same adapter merged into the base for full fine-tuning.
    code, full = run_in_process(make_spec("full", method="full", hp=hp, init_from=init))
    assert code == EXIT_SUCCEEDED, of_type(full, "error")
    assert train_losses(full)[0] == pytest.approx(train_losses(more)[0], rel=1e-3)

    # A fresh adapter on top of full weights: its base is those weights, not model_path.
    full_model = of_type(full, "model")[0]["path"]
    code, on_full = run_in_process(
        make_spec("on-full", hp=hp, init_from={"path": full_model, "kind": "full"})
    )
    assert code == EXIT_SUCCEEDED, of_type(on_full, "error")
    event = of_type(on_full, "model")[0]
    assert event["base_model_path"] == full_model and event["kind"] == "lora_adapter"
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(full_model), event["path"])
    generate(adapted, AutoTokenizer.from_pretrained(event["path"]))


def test_init_from_a_missing_adapter_fails_clearly(make_spec: Callable[..., Path], tmp_path: Path) -> None:
    code, events = run_in_process(make_spec(init_from={"path": str(tmp_path), "kind": "lora_adapter"}))
    assert code == 1
    assert "adapter_config.json" in of_type(events, "error")[0]["reason"]


def test_lora_target_modules_are_honoured(make_spec: Callable[..., Path]) -> None:
    code, events = run_in_process(make_spec(hp={"lora_target_modules": "q_proj, v_proj", "lora_rank": 4}))
    assert code == EXIT_SUCCEEDED
    config = json.loads(Path(of_type(events, "model")[0]["path"], "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 4
