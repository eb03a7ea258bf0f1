"""Turn normalized records into token ids and loss labels.

Conversations are rendered with the model's own chat template; only assistant replies (weight 1) and their
stop tokens carry labels (see chat_template.py), everything else is -100 so the loss ignores it.
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

from .chat_template import (
    IGNORE_INDEX,
    TemplateError,
    TemplateProfile,
    encode_conversation,
    has_chat_template,
    install_chatml,
    profile_template,
)
from .data import DataError, DataIssue, Record, Turn


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


def chat_profile(tokenizer: Any) -> TemplateProfile:
    """The profile ``prepare_tokenizer`` attached to this tokenizer, or a fresh probe."""
    found = getattr(tokenizer, "_tunehouse_profile", None)
    return found if found is not None else profile_template(tokenizer)


def prepare_tokenizer(
    tokenizer: Any, model_dir: Path | None, fallback: str = "chatml"
) -> tuple[TemplateProfile | None, str | None]:
    """Probe (and, for a template-less model, fill in) the chat template once; (profile, warning or None).

    ``fallback`` is the registry's choice for models without a template: "chatml" or "refuse" (then chat
    data is a data error, raised by ``encode_chat``)."""
    warning = None
    missing = not has_chat_template(tokenizer)
    if missing and fallback == "chatml":
        install_chatml(tokenizer)
        warning = (
            "the model has no chat template; conversations are rendered as ChatML (<|im_start|>role ... "
            "<|im_end|>), so prompt it the same way when serving"
        )
    if missing and fallback != "chatml":
        tokenizer._tunehouse_refuse_chat = True
        return None, None
    profile = profile_template(tokenizer, generation_eos(model_dir), fallback=missing)
    tokenizer._tunehouse_profile = profile
    return profile, warning


def generation_eos(model_dir: Path | None) -> list[int]:
    """The ids that end generation: generation_config.json's eos_token_id, else config.json's."""
    if model_dir is None:
        return []
    for name in ("generation_config.json", "config.json"):
        try:
            value = json.loads((Path(model_dir) / name).read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return [value]
        if isinstance(value, list):
            return [int(v) for v in value if isinstance(v, int)]
    return []


def encode_chat(tokenizer: Any, turns: tuple[Turn, ...]) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "_tunehouse_refuse_chat", False):
        raise TemplateError(
            "the model has no chat template and its registry entry refuses a default; register it with "
            "--chat-template-fallback chatml or train on text data"
        )
    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns)
    return encoded.ids, encoded.labels


def encode_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    # Special tokens exactly as the tokenizer's own __call__ adds them for this family (a BOS for Llama-3,
    # Gemma, Mistral, DeepSeek; none for Qwen): its post-processor knows, ``add_bos_token`` may not.
    ids = list(tokenizer(text)["input_ids"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)  # document boundary, so packed documents stay apart
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


def tokenize_rows(
    records: list[Record], tokenizer: Any, max_seq_len: int, name: str = ""
) -> list[TokenizedRow]:
    """Every record tokenized; a conversation the model's template cannot take is a data error naming its
    line, raised (with up to 20 such lines) before any model is loaded."""
    rows: list[TokenizedRow] = []
    issues: list[DataIssue] = []
    for record in records:
        try:
            rows.append(tokenize_row(record, tokenizer, max_seq_len))
        except TemplateError as exc:
            issues.append(DataIssue(record.line, "messages", str(exc)))
            rows.append(TokenizedRow(()))
    if issues:
        prefix = f"{name}: " if name else ""
        shown = "\n".join(f"{prefix}{issue}" for issue in issues[:20])
        more = f"\n{prefix}... and {len(issues) - 20} more line(s)" if len(issues) > 20 else ""
        raise DataError(shown + more)
    return rows


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
    rows = tokenize_rows(records, tokenizer, max_seq_len)
    pairs = any(r.chosen is not None for r in records)
    items, stats = assemble(rows, pairs)
    if any(r.text is not None for r in records):
        stats.policy = "split into chunks"
    return items, stats


# -- cache -------------------------------------------------------------------------------------------

CACHE_VERSION = 2  # 2: labels from chat_template.py (exact spans and stop tokens)


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
        repr(getattr(tokenizer, "_tunehouse_profile", None)),
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
    rows = tokenize_rows(records, tokenizer, max_seq_len, Path(path).name)
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
