"""The model-family stand-ins of tests/families.py are what they claim to be (these test the fixtures,
not the trainer)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.families import (
    FAMILIES,
    REASONING_TURNS,
    SYSTEM_THREE_TURNS,
    Family,
    build_family_model,
    build_family_tokenizer,
)

KEYS = sorted(FAMILIES)


def conversation(family: Family) -> list[dict[str, str]]:
    return SYSTEM_THREE_TURNS if family.system_role else SYSTEM_THREE_TURNS[1:]


@pytest.fixture(scope="session")
def family_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("family-models")
    return lambda key: build_family_model(key, root / key)


@pytest.mark.parametrize("key", KEYS)
def test_model_directory_loads_and_runs_its_rendered_conversation(
    key: str, family_model: Callable[[str], Path]
) -> None:
    family = FAMILIES[key]
    path = family_model(key)
    tokenizer = AutoTokenizer.from_pretrained(path)
    # Gemma-2 soft-caps attention logits, which SDPA can't do.
    extra = {"attn_implementation": "eager"} if key == "gemma2" else {}
    model = AutoModelForCausalLM.from_pretrained(path, **extra)
    assert type(model).__name__ == family.model_class
    batch = tokenizer.apply_chat_template(conversation(family), return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    # The directory's tokenizer is the family's tokenizer, BOS behaviour included.
    built = build_family_tokenizer(key)
    text = built.apply_chat_template(conversation(family), tokenize=False)
    assert tokenizer(text)["input_ids"] == built(text)["input_ids"]
    hello = tokenizer.convert_ids_to_tokens(tokenizer("Hello")["input_ids"])
    assert hello[: len(family.call_prefix)] == list(family.call_prefix)
    eos = model.generation_config.eos_token_id
    eos_tokens = tokenizer.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos])
    assert eos_tokens == list(family.generation_eos)


@pytest.mark.parametrize("key", KEYS)
def test_template_renders_three_turns_with_special_tokens_as_single_ids(key: str) -> None:
    family = FAMILIES[key]
    tokenizer = build_family_tokenizer(key)
    text = tokenizer.apply_chat_template(conversation(family), tokenize=False)
    for message in conversation(family):
        if message["role"] != "system" or family.system_prompt != "last_user":
            assert message["content"] in text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    for token in (*family.special_tokens, *family.added_tokens):
        assert ids.count(tokenizer.convert_tokens_to_ids(token)) == text.count(token), token
    if family.end_of_turn is not None:
        assert text.count(family.end_of_turn) >= 3


def test_gemma2_template_refuses_a_system_turn() -> None:
    tokenizer = build_family_tokenizer("gemma2")
    with pytest.raises(jinja2.TemplateError, match="System role not supported"):
        tokenizer.apply_chat_template(SYSTEM_THREE_TURNS, tokenize=False)


def test_mistral_template_shows_the_system_prompt_only_when_a_user_turn_is_last() -> None:
    tokenizer = build_family_tokenizer("mistral_v0_3")
    system = SYSTEM_THREE_TURNS[0]["content"]
    assert system not in tokenizer.apply_chat_template(SYSTEM_THREE_TURNS, tokenize=False)
    prompt = tokenizer.apply_chat_template(SYSTEM_THREE_TURNS[:-1], tokenize=False)
    assert prompt.endswith(f"[INST] {system}\n\nHow many days are in a week?[/INST]")


def test_generation_markers_cover_each_reply_and_its_end_of_turn_only() -> None:
    tokenizer = build_family_tokenizer("qwen2_5_generation")
    plain = build_family_tokenizer("qwen2_5")
    assert tokenizer.apply_chat_template(SYSTEM_THREE_TURNS, tokenize=False) == plain.apply_chat_template(
        SYSTEM_THREE_TURNS, tokenize=False
    )
    out = tokenizer.apply_chat_template(
        SYSTEM_THREE_TURNS, return_dict=True, return_assistant_tokens_mask=True
    )
    pairs = zip(out["input_ids"], out["assistant_masks"], strict=True)
    replies = [
        tokenizer.decode([token for token, _ in run])
        for masked, run in itertools.groupby(pairs, key=lambda pair: pair[1])
        if masked
    ]
    assert replies == [m["content"] + "<|im_end|>" for m in SYSTEM_THREE_TURNS if m["role"] == "assistant"]


@pytest.mark.parametrize(
    ("key", "kept", "dropped"),
    [
        # Qwen3 keeps the reasoning of turns after the last user query only.
        ("qwen3", "Three plus three makes six.", "Two plus two makes four."),
        # The R1 distills re-render every assistant turn without its reasoning.
        ("deepseek_r1_distill", "Six.", "Three plus three makes six."),
    ],
)
def test_reasoning_turns_render_as_the_family_template_does(key: str, kept: str, dropped: str) -> None:
    text = build_family_tokenizer(key).apply_chat_template(REASONING_TURNS, tokenize=False)
    assert kept in text
    assert dropped not in text


def test_model_build_is_deterministic_and_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    before = torch.random.get_rng_state()
    first = build_family_model("llama3_1", tmp_path / "a")
    second = build_family_model("llama3_1", tmp_path / "b")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
