"""Packing without cross-contamination, and the tokenization cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunehouse.contract.datasets import Record, Turn, load_records
from tunehouse.contract.spec import EXIT_SUCCEEDED
from tunehouse.trainer.batching import collate, collate_packed, pack_bins
from tunehouse.trainer.loop import token_loss
from tunehouse.trainer.tokenization import cache_key, tokenize_file, tokenize_records, tokenizer_fingerprint

from .conftest import chat_rows, of_type, run_in_process, text_rows, write_jsonl


def test_pack_bins_first_fit_decreasing_within_capacity() -> None:
    lengths = [5, 9, 3, 7, 2, 6]
    bins = pack_bins(lengths, capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert bins == [[1], [3, 2], [5, 4], [0]] and pack_bins(lengths, 10) == bins


def test_packed_batch_gives_the_same_loss_as_padded(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    records = [Record(i, text=" ".join(["word"] * (3 + 5 * i)) + " end.") for i in range(4)]
    records += [Record(9, turns=(Turn("user", "Say hello."), Turn("assistant", "Hello there!")))]
    examples, _ = tokenize_records(records[:4], tokenizer, 64)
    chat, _ = tokenize_records(records[4:], tokenizer, 64)
    examples += chat
    padded = collate(examples, tokenizer.pad_token_id)
    packed = collate_packed(examples, 64, tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]  # several examples share a row
    assert packed.real_tokens == padded.real_tokens == sum(len(e.input_ids) for e in examples)
    assert packed.positions < padded.positions
    with torch.no_grad():
        loss_padded, n_padded, _ = token_loss(model(**padded.model_inputs()).logits, padded.labels)
        loss_packed, n_packed, _ = token_loss(model(**packed.model_inputs()).logits, packed.labels)
    assert n_packed == n_padded == sum(e.targets for e in examples)
    assert torch.allclose(loss_packed, loss_padded, rtol=1e-5), (loss_packed, loss_padded)


def test_packed_and_unpacked_runs_follow_the_same_loss_curve(
    make_spec: Callable[..., Path], tmp_path: Path
) -> None:
    rows = chat_rows(repeats=2) + [
        {
            "messages": [
                {"role": "user", "content": "Tell a story."},
                {"role": "assistant", "content": "Once " * 20},
            ]
        }
    ]
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    hp = {"epochs": 3, "method": "full", "learning_rate": 1e-3, "batch_size": 3}
    curves = {}
    for packing in (True, False):
        spec = make_spec(
            f"pack-{packing}", method="full", train_files=[str(data)], hp={**hp, "packing": packing}
        )
        code, events = run_in_process(spec)
        assert code == EXIT_SUCCEEDED, of_type(events, "error")
        curves[packing] = [p["train_loss"] for p in of_type(events, "metrics") if "train_loss" in p]
        shares = [p["padding_share"] for p in of_type(events, "progress")]
        assert all(0 <= s < 1 for s in shares)
        curves[f"share-{packing}"] = shares[-1]
    assert curves[True] == pytest.approx(curves[False], rel=1e-3, abs=1e-4)
    assert curves["share-True"] < curves["share-False"]


def test_pretrain_texts_longer_than_max_seq_len_are_split_not_lost(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "The river runs to the sea and the sea runs to the sky. " * 10
    examples, stats = tokenize_records([Record(1, text=text)], tokenizer, 32)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert [t for e in examples for t in e.input_ids] == whole[: sum(len(e.input_ids) for e in examples)]
    assert len(examples) > 1 and all(len(e.input_ids) <= 32 for e in examples)
    assert stats.truncated == 1 and stats.policy == "split into chunks"


def test_tokenization_cache_hits_on_same_content_and_misses_on_change(
    tiny_model: Path, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    path = write_jsonl(tmp_path / "a.jsonl", chat_rows(repeats=2))
    records = load_records(path)[1]
    cache = tmp_path / "cache"
    fresh, hit = tokenize_file(path, records, tokenizer, 64, "sft", cache)
    assert not hit and len(list(cache.glob("*.pt"))) == 1
    cached, hit = tokenize_file(path, records, tokenizer, 64, "sft", cache)
    assert hit and cached == fresh
    copy = write_jsonl(tmp_path / "b.jsonl", chat_rows(repeats=2))  # same bytes, other name: same entry
    assert tokenize_file(copy, records, tokenizer, 64, "sft", cache)[1]
    fp = tokenizer_fingerprint(tokenizer)
    assert cache_key(path, fp, 64, "sft") != cache_key(path, fp, 32, "sft")
    assert cache_key(path, fp, 64, "sft") != cache_key(path, fp, 64, "pretrain")
    assert not tokenize_file(path, records, tokenizer, 32, "sft", cache)[1]
    next(cache.glob("*.pt")).write_bytes(b"garbage")  # a damaged entry is rebuilt, not trusted
    assert [len(r.sequences) for r in tokenize_file(path, records, tokenizer, 64, "sft", cache)[0]] == [1] * 8


def test_runs_share_the_cache(make_spec: Callable[..., Path], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "t.jsonl", text_rows(repeats=2))
    cache = str(tmp_path / "cache")
    logs = []
    for name in ("one", "two"):
        spec = make_spec(name, train_mode="pretrain", train_files=[str(data)], cache_dir=cache)
        code, events = run_in_process(spec)
        assert code == EXIT_SUCCEEDED
        logs.append(
            next(m["message"] for m in of_type(events, "log") if m["message"].startswith("tokenization"))
        )
    assert "0 of 1 file(s) from the cache" in logs[0] and "1 of 1 file(s) from the cache" in logs[1]
