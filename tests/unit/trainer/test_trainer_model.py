"""The built-in tiny model and the tokenization that feeds it."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.contract.datasets import Record, Turn
from tunehouse.contract.tiny import is_complete_model
from tunehouse.trainer.tiny import build_tiny_model
from tunehouse.trainer.tokenization import IGNORE_INDEX, encode_chat, split_holdout, tokenize_records


def trained_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def test_tiny_model_reloads_and_generates(tiny_model: Path) -> None:
    assert is_complete_model(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens) | set(tokenizer.get_vocab())
    assert tokenizer.pad_token and tokenizer.eos_token and tokenizer.bos_token


def test_build_is_idempotent(tiny_model: Path) -> None:
    before = (tiny_model / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny_model) == tiny_model
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == before


def test_chat_template_renders_chatml_with_generation_prompt(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"


def test_loss_only_on_assistant_turns_with_weight(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    turns = (
        Turn("system", "Be brief."),
        Turn("user", "Hi there"),
        Turn("assistant", "Skipped reply.", weight=0),
        Turn("user", "What is two plus two?"),
        Turn("assistant", "Four."),
    )
    ids, labels = encode_chat(tokenizer, turns)
    assert trained_text(tokenizer, ids, labels).strip() == "Four.<|im_end|>"


def test_masking_survives_multibyte_text(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids, labels = encode_chat(tokenizer, (Turn("user", "你好吗？"), Turn("assistant", "我很好，谢谢。Café")))
    assert trained_text(tokenizer, ids, labels).strip() == "我很好，谢谢。Café<|im_end|>"


def test_pretrain_text_trains_on_every_token(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples, stats = tokenize_records([Record(1, text="The river runs to the sea.")], tokenizer, 64)
    assert examples[0].labels == examples[0].input_ids
    assert examples[0].input_ids[-1] == tokenizer.eos_token_id and stats.truncated == 0


def test_truncation_is_counted_and_label_free_examples_dropped(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    long_prompt = Record(1, turns=(Turn("user", "word " * 200), Turn("assistant", "ok")))
    long_answer = Record(2, turns=(Turn("user", "hi"), Turn("assistant", "answer " * 200)))
    examples, stats = tokenize_records([long_prompt, long_answer], tokenizer, 32)
    assert (stats.truncated, stats.dropped, stats.examples) == (2, 1, 1)
    assert len(examples[0].input_ids) == 32


def test_holdout_split_is_deterministic_and_keeps_training_rows() -> None:
    train, held = split_holdout(10, 20, seed=7)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert split_holdout(10, 20, seed=7) == (train, held)
    assert len(split_holdout(2, 1, seed=7)[1]) == 1  # at least one row when a split is asked for
    assert split_holdout(1, 20, seed=7) == ([0], [])
