"""Turn normalized records into token ids and loss labels.

Conversations are rendered with the model's own chat template; only assistant turns (weight 1)
carry labels, everything else is -100 so the loss ignores it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Record, Turn

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]

    @property
    def targets(self) -> int:
        """Tokens the loss counts: labels are shifted by one, so position 0 is never a target."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class Pair:
    """A DPO example: the same prompt answered with the preferred and the rejected reply."""

    chosen: Example
    rejected: Example


@dataclass(frozen=True)
class TokenizedRow:
    """What one data row became: [] if dropped, one example (sft), chunks (pretrain) or
    [chosen, rejected] (dpo)."""

    sequences: tuple[Example, ...]
    truncated: bool = False


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn from after truncation (or too short)
    tokens: int = 0
    policy: str = "truncated"

    def describe(self, name: str, max_seq_len: int) -> str:
        return (
            f"{name}: {self.examples} example(s), {self.tokens} tokens, {self.truncated} {self.policy} to "
            f"max_seq_len={max_seq_len}, {self.dropped} dropped with no trainable tokens left"
        )


def _render(tokenizer: Any, turns: tuple[Turn, ...] | list[Turn], generation_prompt: bool = False) -> str:
    messages = [{"role": t.role, "content": t.content} for t in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _assistant_spans(tokenizer: Any, turns: tuple[Turn, ...], full: str) -> list[tuple[int, int]]:
    """Character spans of the trainable assistant turns within ``full``.

    A turn's span runs from the end of the generation prompt before it to the end of the
    conversation rendered through it, so it includes the end-of-turn marker and the model learns
    to stop. Templates that re-render earlier turns differently (so prefixes don't line up) fall
    back to locating the raw content.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        before = _render(tokenizer, turns[:i], generation_prompt=True)
        through = _render(tokenizer, turns[: i + 1])
        if full.startswith(through) and through.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(through)
        else:
            start = full.find(turn.content, cursor)
            if start < 0:
                continue
            end = start + len(turn.content)
        cursor = end
        if turn.weight:
            spans.append((start, end))
    return spans


def encode_chat(tokenizer: Any, turns: tuple[Turn, ...]) -> tuple[list[int], list[int]]:
    full = _render(tokenizer, turns)
    spans = _assistant_spans(tokenizer, turns, full)
    # The template already contains any BOS/EOS the model wants; don't let the tokenizer add more.
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    return ids, labels


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id] + ids
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # document boundary, so the model learns where texts end
    return ids, list(ids)


def _usable(ids: list[int], labels: list[int]) -> bool:
    return len(ids) >= 2 and any(label != IGNORE_INDEX for label in labels[1:])


def tokenize_row(record: Record, tokenizer: Any, max_seq_len: int) -> TokenizedRow:
    """Truncation policy: chat and preference rows are cut at the right end (the prompt stays);
    plain text is split into max_seq_len chunks, so continued pre-training loses nothing."""
    if record.text is not None:
        ids, labels = encode_text(tokenizer, record.text)
        chunks = [
            Example(ids[i : i + max_seq_len], labels[i : i + max_seq_len])
            for i in range(0, len(ids), max_seq_len)
        ]
        usable = tuple(c for c in chunks if _usable(c.input_ids, c.labels))
        return TokenizedRow(usable, truncated=len(chunks) > 1)
    if record.chosen is not None and record.rejected is not None:
        pair: list[Example] = []
        truncated = False
        for reply in (record.chosen, record.rejected):
            ids, labels = encode_chat(tokenizer, (*record.turns, Turn("assistant", reply)))
            truncated |= len(ids) > max_seq_len
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
            if not _usable(ids, labels):
                return TokenizedRow((), truncated)
            pair.append(Example(ids, labels))
        return TokenizedRow(tuple(pair), truncated)
    ids, labels = encode_chat(tokenizer, record.turns)
    truncated = len(ids) > max_seq_len
    ids, labels = ids[:max_seq_len], labels[:max_seq_len]
    return TokenizedRow((Example(ids, labels),) if _usable(ids, labels) else (), truncated)


def assemble(rows: list[TokenizedRow], pairs: bool = False) -> tuple[list[Any], TokenizeStats]:
    """Flatten tokenized rows into training items (Examples, or Pairs for DPO) with their stats."""
    stats = TokenizeStats()
    items: list[Any] = []
    for row in rows:
        stats.truncated += row.truncated
        if not row.sequences:
            stats.dropped += 1
            continue
        stats.tokens += sum(len(e.input_ids) for e in row.sequences)
        if pairs:
            items.append(Pair(*row.sequences))
        else:
            items.extend(row.sequences)
    stats.examples = len(items)
    return items, stats


def tokenize_records(
    records: list[Record], tokenizer: Any, max_seq_len: int
) -> tuple[list[Any], TokenizeStats]:
    rows = [tokenize_row(r, tokenizer, max_seq_len) for r in records]
    pairs = any(r.chosen is not None for r in records)
    items, stats = assemble(rows, pairs)
    if any(r.text is not None for r in records):
        stats.policy = "split into chunks"
    return items, stats


# -- cache -------------------------------------------------------------------------------------------

CACHE_VERSION = 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Changes whenever the same text could tokenize or render differently."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary is the best stand-in we have
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    extra = [
        getattr(tokenizer, "chat_template", None),
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        bool(getattr(tokenizer, "add_bos_token", False)),
    ]
    h.update(json.dumps(extra, default=str).encode())
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(path: Path, fingerprint: str, max_seq_len: int, train_mode: str) -> str:
    parts = [str(CACHE_VERSION), _file_digest(path), fingerprint, str(max_seq_len), train_mode]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _save_rows(dest: Path, rows: list[TokenizedRow]) -> None:
    import torch

    seqs = [e for row in rows for e in row.sequences]
    payload = {
        "ids": torch.tensor([t for e in seqs for t in e.input_ids], dtype=torch.int32),
        "labels": torch.tensor([t for e in seqs for t in e.labels], dtype=torch.int32),
        "lens": torch.tensor([len(e.input_ids) for e in seqs], dtype=torch.int32),
        "counts": torch.tensor([len(row.sequences) for row in rows], dtype=torch.int32),
        "truncated": torch.tensor([row.truncated for row in rows], dtype=torch.bool),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, dest)  # concurrent runs writing the same key write the same bytes


def _load_rows(src: Path) -> list[TokenizedRow]:
    import torch

    payload = torch.load(src, weights_only=True)
    ids, labels = payload["ids"].tolist(), payload["labels"].tolist()
    lens = payload["lens"].tolist()
    rows: list[TokenizedRow] = []
    pos = seq = 0
    for count, truncated in zip(payload["counts"].tolist(), payload["truncated"].tolist(), strict=True):
        sequences = []
        for _ in range(count):
            n = lens[seq]
            sequences.append(Example(ids[pos : pos + n], labels[pos : pos + n]))
            pos, seq = pos + n, seq + 1
        rows.append(TokenizedRow(tuple(sequences), bool(truncated)))
    return rows


def tokenize_file(
    path: Path,
    records: list[Record],
    tokenizer: Any,
    max_seq_len: int,
    train_mode: str,
    cache_dir: Path | None = None,
    fingerprint: str | None = None,
) -> tuple[list[TokenizedRow], bool]:
    """Tokenized rows of one file (aligned with ``records``) and whether they came from the cache.

    The cache key covers the file's bytes, the tokenizer, max_seq_len and train_mode, so any change
    that could alter the tokens misses it; a corrupt entry is rebuilt, never trusted.
    """
    entry = None
    if cache_dir is not None:
        key = cache_key(path, fingerprint or tokenizer_fingerprint(tokenizer), max_seq_len, train_mode)
        entry = Path(cache_dir) / f"{key}.pt"
        if entry.is_file():
            try:
                rows = _load_rows(entry)
                if len(rows) == len(records):
                    return rows, True
            except Exception:  # noqa: BLE001 - a damaged entry is just a miss
                pass
    rows = [tokenize_row(r, tokenizer, max_seq_len) for r in records]
    if entry is not None:
        with contextlib.suppress(OSError):  # a read-only or full cache must not fail the run
            _save_rows(entry, rows)
    return rows, False


def split_holdout(n: int, split_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, eval): ``split_ratio`` percent held out, at least one row when possible."""
    if split_ratio <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * split_ratio / 100)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[k:]), sorted(order[:k])
