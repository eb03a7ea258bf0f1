"""The run's training and evaluation items: files tokenized (through the cache), split, assembled."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunehouse.contract.datasets import DataError, formats_for_train_mode, load_records
from tunehouse.contract.spec import RunSpec

from .store_sync import pull_token_cache, push_token_cache
from .tokenization import (
    TokenizedRow,
    assemble,
    cache_key,
    split_holdout,
    tokenize_file,
    tokenizer_fingerprint,
)


def _tokenize(
    spec: RunSpec, paths: list[Path], tokenizer: Any, fingerprint: str
) -> tuple[list[TokenizedRow], int]:
    allowed = formats_for_train_mode(spec.train_mode)
    rows: list[TokenizedRow] = []
    hits = 0
    for path in paths:
        records = load_records(path, allowed)[1]
        shared = None  # this node's copy of an entry of the store's cache, shared by every node
        if spec.token_cache_url is not None and spec.cache_dir is not None:
            key = cache_key(path, fingerprint, spec.hyperparameters.max_seq_len, spec.train_mode)
            shared = spec.cache_dir / f"{key}.pt"
            pull_token_cache(spec, shared)
        file_rows, hit = tokenize_file(
            path,
            records,
            tokenizer,
            spec.hyperparameters.max_seq_len,
            spec.train_mode,
            spec.cache_dir,
            fingerprint,
        )
        if shared is not None and not hit:
            push_token_cache(spec, shared)
        rows += file_rows
        hits += hit
    return rows, hits


def load_items(
    spec: RunSpec, tokenizer: Any, pairs: bool, length_policy: str, log: Callable[[str], None]
) -> tuple[list[Any], list[Any]]:
    """(training items, evaluation items): Examples, or Pairs when ``pairs``. The evaluation items are
    the rows held out by split_ratio followed by the validation files."""
    hp = spec.hyperparameters
    fingerprint = tokenizer_fingerprint(tokenizer)
    started = time.monotonic()
    rows, hits = _tokenize(spec, spec.train_files, tokenizer, fingerprint)
    validation, vhits = _tokenize(spec, spec.validation_files, tokenizer, fingerprint)
    train_idx, held_idx = split_holdout(len(rows), hp.split_ratio, hp.seed)
    log(
        f"data: {len(rows)} training row(s) from {len(spec.train_files)} file(s); {len(held_idx)} held "
        f"out for evaluation (split_ratio={hp.split_ratio}%); {len(validation)} validation row(s)"
    )
    files = len(spec.train_files) + len(spec.validation_files)
    cache = "no cache" if spec.cache_dir is None else f"{hits + vhits} of {files} file(s) from the cache"
    log(f"tokenization: {time.monotonic() - started:.2f}s, {cache}")
    train_items, stats = assemble([rows[i] for i in train_idx], pairs=pairs)
    stats.policy = length_policy
    log(stats.describe("train", hp.max_seq_len))
    eval_items: list[Any] = []
    held = [rows[i] for i in held_idx] + validation
    if held:
        eval_items, eval_stats = assemble(held, pairs=pairs)
        eval_stats.policy = length_policy
        log(eval_stats.describe("eval", hp.max_seq_len))
    if not train_items:
        raise DataError(
            f"no usable training examples: all {len(train_idx)} row(s) lost their trainable tokens when "
            f"truncated to max_seq_len={hp.max_seq_len}"
        )
    return train_items, eval_items
