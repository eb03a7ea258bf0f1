"""Turn normalized records into token ids and loss labels.

Conversations are rendered with the model's own chat template; only assistant turns (weight 1)
carry labels, everything else is -100 so the loss ignores it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .data import Record, Turn

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass
class TokenizeStats:
    examples: int = 0
    truncated: int = 0
    dropped: int = 0  # nothing left to learn from after truncation (or too short)
    tokens: int = 0

    def describe(self, name: str, max_seq_len: int) -> str:
        return (
            f"{name}: {self.examples} example(s), {self.tokens} tokens, {self.truncated} truncated to "
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


def tokenize_records(
    records: list[Record], tokenizer: Any, max_seq_len: int
) -> tuple[list[Example], TokenizeStats]:
    stats = TokenizeStats()
    examples: list[Example] = []
    for record in records:
        if record.text is not None:
            ids, labels = encode_text(tokenizer, record.text)
        else:
            ids, labels = encode_chat(tokenizer, record.turns)
        if len(ids) > max_seq_len:
            stats.truncated += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        # Labels are shifted by one inside the loss, so the first position never counts.
        if len(ids) < 2 or all(label == IGNORE_INDEX for label in labels[1:]):
            stats.dropped += 1
            continue
        stats.examples += 1
        stats.tokens += len(ids)
        examples.append(Example(ids, labels))
    return examples, stats


def split_holdout(n: int, split_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, eval): ``split_ratio`` percent held out, at least one row when possible."""
    if split_ratio <= 0 or n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, round(n * split_ratio / 100)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[k:]), sorted(order[:k])
