"""Which tokens of a conversation are trained: exact for any chat template, found without searching text.

A conversation is rendered once with the model's own template. Each message's content is then located in
that rendering by rendering it again with the content replaced by a sentinel: the two renderings agree
everywhere except where the content is, so the common prefix and suffix bound it exactly, whatever the
template adds, trims or moves around it. An assistant turn is trained from where the model starts generating
(the end of the generation prompt, when the rendering starts with it; otherwise the start of its content)
through the first stop token that follows its content (the tokenizer's EOS or any ``eos_token_id`` of the
model's generation config, such as ``<|eot_id|>``, ``<end_of_turn>``, ``<|end|>`` or GLM-4's ``<|user|>``),
so the model learns to stop; text after the stop token (a newline, a trailing EOS a template appends) is
not. A last turn that the template leaves open (GLM-4) gets the EOS appended and trained.

Templates that have ``{% generation %}`` markers are trusted instead: the tokenizer's assistant mask is
used.

Documented treatments:
- A system prompt that the template refuses (Gemma-2) or silently drops (Mistral v0.3 renders it only when
  the conversation ends on a user turn, so never in training data) is folded into the first user turn,
  separated by a blank line, as those families' own docs suggest, so every trained reply has it in context.
- Reasoning (``reasoning_content`` or an inline ``<think>...</think>`` block) is passed to templates that
  render ``reasoning_content`` (Qwen3) and otherwise written inline. The last assistant turn is trained with
  its reasoning as the family renders a reply in progress: templates that strip reasoning from every
  assistant turn (DeepSeek-R1 distills) get the reply built as generation prompt + ``<think>`` block +
  answer. Earlier turns are trained as the template renders them in the full conversation (Qwen3 and
  DeepSeek drop their reasoning there), so that what is trained is what the model sees as context in later
  turns.
- A tokenizer without a chat template gets ChatML (with its BOS, if its own ``__call__`` adds one) when the
  model's registry entry allows it, else the run fails with a data error before any training.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunehouse.contract.datasets import Turn

IGNORE_INDEX = -100

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

# Private-use characters: no template trims them, splits on them or finds them in real text.
_SENTINELS = ("\ue000\ue001", "\ue002\ue003")
_PROBE_SYSTEM, _PROBE_USER, _PROBE_REPLY, _PROBE_REASONING = "\ue010", "\ue011", "\ue012", "\ue013"


class TemplateError(Exception):
    """The model's chat template cannot render this conversation, or its turns cannot be located exactly."""


@dataclass(frozen=True)
class TemplateProfile:
    """What a tokenizer's chat template does, probed once per tokenizer."""

    generation_markers: bool
    system: Literal["native", "folded"]
    reasoning_field: bool  # renders an assistant message's reasoning_content
    strips_reasoning: bool  # drops an inline <think> block even from the last assistant turn
    stop_ids: frozenset[int]
    eos_id: int | None
    fallback: bool = False  # the tokenizer had no template; ChatML was put in


@dataclass(frozen=True)
class Encoded:
    """A rendered, tokenized conversation: token ids, their labels and their character spans in ``text``."""

    ids: list[int]
    labels: list[int]
    text: str
    # An appended token (an EOS the template left out) has the empty span (len(text), len(text)).
    offsets: list[tuple[int, int]]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def install_chatml(tokenizer: Any) -> None:
    """Give a tokenizer without a template ChatML, with the BOS its own ``__call__`` would add."""
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos]
    tokenizer.chat_template = ("{{- bos_token }}" if adds_bos else "") + CHATML_TEMPLATE


def stop_token_ids(tokenizer: Any, generation_eos: int | Iterable[int] | None) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if isinstance(generation_eos, int):
        ids.add(generation_eos)
    elif generation_eos is not None:
        ids.update(int(i) for i in generation_eos)
    return frozenset(ids)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja2's TemplateError, raise_exception() in templates, ValueError, ...
        raise TemplateError(f"the model's chat template refused the conversation: {exc}") from exc
    if not isinstance(text, str):
        raise TemplateError("the model's chat template did not render text")
    return text


def profile_template(
    tokenizer: Any, generation_eos: int | Iterable[int] | None = None, fallback: bool = False
) -> TemplateProfile:
    """Probe the template with private-use placeholder text: how it treats system prompts and reasoning."""
    template = str(tokenizer.chat_template)
    user = {"role": "user", "content": _PROBE_USER}
    system = "native"
    try:
        # Ending on an assistant turn, as training data does: Mistral v0.3 renders the system prompt only
        # when the conversation ends on a user turn, and drops it silently otherwise.
        reply = {"role": "assistant", "content": _PROBE_REPLY}
        with_system = _render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM}, user, reply])
        if _PROBE_SYSTEM not in with_system:
            system = "folded"  # silently dropped
    except TemplateError:
        system = "folded"  # refused
    probe_field = {"role": "assistant", "content": _PROBE_REPLY, "reasoning_content": _PROBE_REASONING}
    reasoning_field = _PROBE_REASONING in _render(tokenizer, [user, probe_field])
    inline = {"role": "assistant", "content": _inline(_PROBE_REASONING, _PROBE_REPLY)}
    strips = _PROBE_REASONING not in _render(tokenizer, [user, inline])
    stops = stop_token_ids(tokenizer, generation_eos) | _end_of_turn_tokens(tokenizer, user)
    return TemplateProfile(
        generation_markers=_GENERATION_TAG.search(template) is not None,
        system=system,  # type: ignore[arg-type]
        reasoning_field=reasoning_field,
        strips_reasoning=strips,
        stop_ids=stops,
        eos_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(stops, default=None),
        fallback=fallback,
    )


def _end_of_turn_tokens(tokenizer: Any, user: dict[str, str]) -> set[int]:
    """The special token a template puts right after a reply (``<end_of_turn>``, ``<|end|>``, GLM-4's next
    ``<|user|>``): a stop token even where the model ships no generation_config.json to say so."""
    messages = [user, {"role": "assistant", "content": _PROBE_REPLY}, user]
    try:
        full = _render(tokenizer, messages)
        end = _content_region(tokenizer, messages, 1, full)[1]
    except TemplateError:
        return set()
    ids, offsets = _tokenize(tokenizer, full)
    special = set(getattr(tokenizer, "all_special_ids", [])) | set(
        getattr(tokenizer, "added_tokens_decoder", {}) or {}
    )
    after = next((i for i, (a, b) in zip(ids, offsets, strict=True) if a >= end and b > a), None)
    return {after} if after is not None and after in special else set()


def _inline(reasoning: str, content: str) -> str:
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{content.lstrip()}"


def split_reasoning(turn: Turn) -> tuple[str | None, str]:
    """(reasoning, answer) of an assistant turn: its reasoning field, or an inline leading <think> block."""
    if turn.reasoning is not None:
        return turn.reasoning, turn.content
    content = turn.content
    if THINK_CLOSE in content and content.lstrip().startswith(THINK_OPEN):
        head, _, answer = content.partition(THINK_CLOSE)
        return head.lstrip()[len(THINK_OPEN) :].strip("\n"), answer.lstrip("\n")
    return None, content


def to_messages(profile: TemplateProfile, turns: Sequence[Turn]) -> list[dict[str, str]]:
    """The conversation as the template should see it: system folded where the template cannot take it,
    reasoning as ``reasoning_content`` where the template renders that field, else inline."""
    messages: list[dict[str, str]] = []
    pending_system: str | None = None
    for turn in turns:
        if turn.role == "system" and profile.system == "folded":
            pending_system = turn.content
            continue
        message = {"role": turn.role, "content": turn.content}
        if turn.role == "user" and pending_system is not None:
            if pending_system.strip():
                message["content"] = f"{pending_system}\n\n{turn.content}"
            pending_system = None
        if turn.role == "assistant":
            reasoning, answer = split_reasoning(turn)
            if reasoning is not None and profile.reasoning_field:
                message.update(content=answer, reasoning_content=reasoning)
            elif reasoning is not None:
                message["content"] = _inline(reasoning, answer)
        messages.append(message)
    return messages


def kept_turns(profile: TemplateProfile, turns: Sequence[Turn]) -> list[Turn]:
    """The turns that become messages, aligned with ``to_messages``."""
    return [t for t in turns if not (t.role == "system" and profile.system == "folded")]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str, floor: int) -> int:
    """Length of the common suffix, not reaching into the first ``floor`` characters of either."""
    n = min(len(a), len(b)) - floor
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


def _content_region(tokenizer: Any, messages: list[dict[str, str]], index: int, full: str) -> tuple[int, int]:
    """Character span of message ``index``'s content within ``full``: render it again with the content
    swapped for a sentinel; the renderings differ exactly there. If the content happens to start or end with
    the sentinel's own character, the agreement reaches into it and the check below fails: the second
    sentinel, with other characters, then settles it."""
    for sentinel in _SENTINELS:
        swapped = [dict(m) for m in messages]
        swapped[index]["content"] = sentinel
        other = _render(tokenizer, swapped)
        start = _common_prefix(full, other)
        tail = _common_suffix(full, other, start)
        if other[start : len(other) - tail] == sentinel:
            return start, len(full) - tail
    raise TemplateError(
        f"cannot locate message {index} ({messages[index]['role']}) in the template's rendering: the "
        "template renders its content more than once or rewrites it"
    )


def _tokenize(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    # The template already holds whatever BOS/EOS the model wants; the tokenizer must not add more.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [(int(a), int(b)) for a, b in enc["offset_mapping"]]


def _first_token(offsets: list[tuple[int, int]], start: int) -> int:
    """The first token holding a character at or after ``start`` (a token that merges the preceding space
    into the reply's first word is the reply's first token)."""
    for j, (a, b) in enumerate(offsets):
        if b > start and b > a:
            return j
    raise TemplateError("an assistant turn renders to no tokens")


def _last_token(offsets: list[tuple[int, int]], end: int) -> int:
    """The last token holding a character before ``end``."""
    for j in range(len(offsets) - 1, -1, -1):
        a, b = offsets[j]
        if a < end and b > a:
            return j
    raise TemplateError("an assistant turn renders to no tokens")


def encode_conversation(tokenizer: Any, profile: TemplateProfile, turns: Sequence[Turn]) -> Encoded:
    """Token ids and labels: every trained assistant turn's reply and its stop token, nothing else."""
    messages = to_messages(profile, turns)
    kept = kept_turns(profile, turns)
    if profile.generation_markers:
        return _encode_with_markers(tokenizer, messages, kept)
    full = _render(tokenizer, messages)
    assistants = [k for k, t in enumerate(kept) if t.role == "assistant"]
    regions = {k: _content_region(tokenizer, messages, k, full) for k in assistants}
    # Where each assistant turn's stop token must appear by: before the next message's content.
    windows = {
        k: _content_region(tokenizer, messages, k + 1, full)[0] if k + 1 < len(kept) else None
        for k in assistants
    }
    trained_from: dict[int, int] = {}
    for k in assistants:
        prompt = _render(tokenizer, messages[:k], generation_prompt=True)
        # The model generates everything after its generation prompt (Qwen3's empty <think> block too); where
        # the rendering does not continue the prompt (a moved system prompt), the reply starts at its content.
        start = regions[k][0]
        trained_from[k] = len(prompt) if full.startswith(prompt) and len(prompt) <= start else start
    text = full
    last = len(kept) - 1
    if kept[last].role == "assistant" and profile.strips_reasoning:
        reasoning, answer = split_reasoning(kept[last])
        if reasoning is not None:
            text = _open_reasoning(tokenizer, messages, kept, regions, trained_from, full, reasoning, answer)
    ids, offsets = _tokenize(tokenizer, text)
    labels = [IGNORE_INDEX] * len(ids)
    appended = False
    for k in assistants:
        first = _first_token(offsets, trained_from[k])
        last_content = _last_token(offsets, regions[k][1])
        window = windows[k] if windows[k] is not None else len(text)
        after = range(last_content + 1, len(ids))
        stop = next((j for j in after if offsets[j][0] < window and ids[j] in profile.stop_ids), None)
        if stop is None:
            stop = _end_without_stop(tokenizer, messages, k, text, offsets, last_content, is_last=k == last)
            appended = k == last
        if kept[k].weight:
            labels[first : stop + 1] = ids[first : stop + 1]
        if appended:
            # The template leaves the last turn open (GLM-4, ChatML on a base model): the model must still
            # learn to stop, right after the turn (trailing whitespace is cut).
            if profile.eos_id is None:
                raise TemplateError("the template ends the last turn with no stop token and there is no EOS")
            del ids[stop + 1 :], labels[stop + 1 :], offsets[stop + 1 :]
            text = text[: offsets[stop][1]]
            ids.append(profile.eos_id)
            offsets.append((len(text), len(text)))
            labels.append(profile.eos_id if kept[k].weight else IGNORE_INDEX)
    return Encoded(ids, labels, text, offsets)


def _open_reasoning(
    tokenizer: Any,
    messages: list[dict[str, str]],
    kept: Sequence[Turn],
    regions: dict[int, tuple[int, int]],
    trained_from: dict[int, int],
    full: str,
    reasoning: str,
    answer: str,
) -> str:
    """The rendering with the last reply as the model generates it: its generation prompt, then the reasoning
    block and the answer, then what the template puts after the reply. For templates that strip reasoning from
    every assistant turn (DeepSeek-R1 distills); updates the last turn's region in place."""
    last = len(kept) - 1
    prompt = _render(tokenizer, messages[:last], generation_prompt=True)
    reply = _inline(reasoning, answer)
    # The generation prompt may already open the block (DeepSeek-R1's ends with "<think>\n").
    overlap = next((n for n in range(min(len(prompt), len(reply)), 0, -1) if prompt.endswith(reply[:n])), 0)
    text = prompt + reply[overlap:] + full[regions[last][1] :]
    earlier = max((regions[k][1] for k in regions if k != last), default=0)
    if last > 0:
        earlier = max(earlier, _content_region(tokenizer, messages, last - 1, full)[1])
    if _common_prefix(text, full) < earlier:
        raise TemplateError("the generation prompt does not continue the conversation as rendered")
    regions[last] = (len(prompt), len(prompt) + len(reply) - overlap)
    trained_from[last] = len(prompt)
    return text


def _end_without_stop(
    tokenizer: Any,
    messages: list[dict[str, str]],
    k: int,
    text: str,
    offsets: list[tuple[int, int]],
    last_content: int,
    is_last: bool,
) -> int:
    """The last token of turn ``k`` when no stop token follows its content (GLM-4's last turn, ChatML on a
    base model whose tokenizer lacks its tokens): the end of the conversation rendered through that turn,
    trailing whitespace excluded."""
    if is_last:
        end = len(text.rstrip())
    else:
        through = _render(tokenizer, messages[: k + 1])
        if not text.startswith(through):
            raise TemplateError(
                f"no stop token follows assistant message {k} and the template renders it differently later; "
                "list the model's end-of-turn token in its generation_config.json eos_token_id"
            )
        end = len(through.rstrip())
    j = last_content
    while j + 1 < len(offsets) and offsets[j + 1][0] < end and offsets[j + 1][1] > offsets[j + 1][0]:
        j += 1
    return j


def _encode_with_markers(tokenizer: Any, messages: list[dict[str, str]], kept: Sequence[Turn]) -> Encoded:
    """The template marks what is generated ({% generation %}): its assistant mask is the truth."""
    try:
        out = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
    except Exception as exc:
        raise TemplateError(f"the model's chat template refused the conversation: {exc}") from exc
    text = _render(tokenizer, messages)
    ids, offsets = _tokenize(tokenizer, text)
    if list(out["input_ids"]) != ids:
        raise TemplateError("the template's assistant mask was computed over different tokens")
    mask = list(out["assistant_masks"])
    runs: list[list[int]] = []
    for j, marked in enumerate(mask):
        if marked and runs and runs[-1][1] == j - 1:
            runs[-1][1] = j
        elif marked:
            runs.append([j, j])
    weights = [t.weight for t in kept if t.role == "assistant"]
    if len(runs) != len(weights):
        raise TemplateError(
            f"the template's generation markers cover {len(runs)} span(s) but the conversation has "
            f"{len(weights)} assistant turn(s)"
        )
    labels = [IGNORE_INDEX] * len(ids)
    for (first, last), weight in zip(runs, weights, strict=True):
        if weight:
            labels[first : last + 1] = ids[first : last + 1]
    return Encoded(ids, labels, text, offsets)


def segments(encoded: Encoded, tokenizer: Any) -> list[dict[str, Any]]:
    """The rendering cut into untrained and trained pieces whose texts concatenate to it (then any appended
    EOS), so a user sees what will be learned."""
    trained = [False] * len(encoded.text)
    tail: list[tuple[str, bool]] = []
    for j, (a, b) in enumerate(encoded.offsets):
        is_trained = encoded.labels[j] != IGNORE_INDEX
        if a == b == len(encoded.text):
            tail.append((str(tokenizer.convert_ids_to_tokens(encoded.ids[j])), is_trained))
        elif is_trained:
            trained[a:b] = [True] * (b - a)
    out: list[dict[str, Any]] = []
    pieces = [(ch, trained[i]) for i, ch in enumerate(encoded.text)] + tail
    for piece, flag in pieces:
        if out and out[-1]["trained"] == flag:
            out[-1]["text"] += piece
        else:
            out.append({"text": piece, "trained": flag})
    return out
