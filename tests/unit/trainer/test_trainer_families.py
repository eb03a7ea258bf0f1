"""Every major model family trains exactly its replies and their end-of-turn tokens, nothing else.

Each family is a random-weight model of its real architecture with its real chat template and special tokens
(tests/families.py). The trained text is read off the token offsets, so a dropped first token, a missing
end-of-turn or a labelled user token changes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.families import (
    FAMILIES,
    REASONING_TURNS,
    SYSTEM_THREE_TURNS,
    build_family_model,
    build_family_tokenizer,
)
from tunehouse.trainer.chat_template import encode_conversation, segments
from tunehouse.trainer.data import Turn
from tunehouse.trainer.tokenization import encode_chat, encode_text, prepare_tokenizer

from .conftest import of_type, run_in_process, write_jsonl

KEYS = sorted(FAMILIES)
# What a family's model emits before its reply's first word: Mistral's template puts a space after [/INST],
# GLM-4's a newline after <|assistant|>; the model generates both.
LEADS = {"mistral_v0_3": " ", "glm4": "\n"}


def turns_of(messages: list[dict[str, str]]) -> tuple[Turn, ...]:
    return tuple(Turn(m["role"], m["content"], int(m.get("weight", 1))) for m in messages)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {key: build_family_model(key, root / key) for key in KEYS}


def prepared(key: str, model_dir: Path | None = None) -> Any:
    tokenizer = build_family_tokenizer(key)
    if model_dir is None:
        # The same stop tokens the model directory's generation_config.json lists.
        tokenizer = _with_generation_eos(tokenizer, key)
    else:
        prepare_tokenizer(tokenizer, model_dir)
    return tokenizer


def _with_generation_eos(tokenizer: Any, key: str) -> Any:
    from tunehouse.trainer.chat_template import profile_template

    ids = tokenizer.convert_tokens_to_ids(list(FAMILIES[key].generation_eos))
    tokenizer._tunehouse_profile = profile_template(tokenizer, ids)
    return tokenizer


def trained_texts(tokenizer: Any, turns: tuple[Turn, ...]) -> list[str]:
    from tunehouse.trainer.tokenization import chat_profile

    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns)
    return [s["text"] for s in segments(encoded, tokenizer) if s["trained"]]


def end_of_turn(key: str, last: bool) -> str:
    family = FAMILIES[key]
    if family.end_of_turn is not None:
        return family.end_of_turn
    # GLM-4 ends a reply by emitting the next role token; the last reply gets the EOS.
    return family.eos if last else "<|user|>"


def expected_replies(key: str, messages: list[dict[str, str]]) -> list[str]:
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    out = []
    for i, reply in enumerate(replies):
        last = i == len(replies) - 1
        opening = "<think>\n\n</think>\n\n" if key == "qwen3" and last else ""  # Qwen3's last reply
        out.append(LEADS.get(key, "") + opening + reply + end_of_turn(key, last))
    return out


@pytest.mark.parametrize("key", KEYS)
def test_a_three_turn_conversation_with_a_system_prompt_trains_each_reply_and_its_end_of_turn(
    key: str,
) -> None:
    tokenizer = prepared(key)
    assert trained_texts(tokenizer, turns_of(SYSTEM_THREE_TURNS)) == expected_replies(key, SYSTEM_THREE_TURNS)


@pytest.mark.parametrize("key", KEYS)
def test_without_a_generation_config_the_end_of_turn_token_is_still_found(key: str) -> None:
    """Directories often lack generation_config.json; the token the template puts after a reply is taken as
    the stop token then."""
    from tunehouse.trainer.chat_template import profile_template

    tokenizer = build_family_tokenizer(key)
    tokenizer._tunehouse_profile = profile_template(tokenizer, None)
    assert trained_texts(tokenizer, turns_of(SYSTEM_THREE_TURNS)) == expected_replies(key, SYSTEM_THREE_TURNS)


@pytest.mark.parametrize("key", KEYS)
def test_nothing_outside_the_replies_is_trained(key: str) -> None:
    tokenizer = prepared(key)
    from tunehouse.trainer.tokenization import chat_profile

    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns_of(SYSTEM_THREE_TURNS))
    context = "".join(s["text"] for s in segments(encoded, tokenizer) if not s["trained"])
    for message in SYSTEM_THREE_TURNS:
        if message["role"] != "assistant":
            assert message["content"] in context  # whole: not a character of it is labelled
    assert "Reply with OK." in context


@pytest.mark.parametrize("key", KEYS)
def test_a_single_turn_trains_its_reply(key: str) -> None:
    messages = SYSTEM_THREE_TURNS[1:3]
    assert trained_texts(prepared(key), turns_of(messages)) == expected_replies(key, messages)


@pytest.mark.parametrize("key", KEYS)
def test_a_turn_with_weight_zero_is_context_only(key: str) -> None:
    messages = [dict(m) for m in SYSTEM_THREE_TURNS]
    messages[4]["weight"] = "0"
    expected = expected_replies(key, SYSTEM_THREE_TURNS)
    assert trained_texts(prepared(key), turns_of(messages)) == [expected[0], expected[2]]


@pytest.mark.parametrize("key", KEYS)
def test_the_system_prompt_is_never_lost(key: str) -> None:
    """Templates that refuse (Gemma-2) or drop (Mistral v0.3) a system turn get it folded into the first
    user turn; the others render it where they put it."""
    tokenizer = prepared(key)
    from tunehouse.trainer.tokenization import chat_profile

    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns_of(SYSTEM_THREE_TURNS))
    assert SYSTEM_THREE_TURNS[0]["content"] in encoded.text


def test_gemma2_refuses_a_system_role_so_it_is_folded_into_the_first_user_turn() -> None:
    tokenizer = prepared("gemma2")
    from tunehouse.trainer.tokenization import chat_profile

    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns_of(SYSTEM_THREE_TURNS))
    system, first_user = SYSTEM_THREE_TURNS[0]["content"], SYSTEM_THREE_TURNS[1]["content"]
    assert f"<start_of_turn>user\n{system}\n\n{first_user}<end_of_turn>" in encoded.text


def test_generation_markers_give_the_same_labels_as_the_exact_method() -> None:
    marked, plain = prepared("qwen2_5_generation"), prepared("qwen2_5")
    turns = turns_of(SYSTEM_THREE_TURNS)
    assert marked._tunehouse_profile.generation_markers and not plain._tunehouse_profile.generation_markers
    assert encode_chat(marked, turns)[1] == encode_chat(plain, turns)[1]


# -- reasoning -------------------------------------------------------------------------------------


def test_qwen3_trains_the_last_replys_reasoning_and_earlier_replies_as_rendered() -> None:
    texts = trained_texts(prepared("qwen3"), turns_of(REASONING_TURNS))
    assert texts == [
        "Four.<|im_end|>",  # Qwen3 renders earlier turns without their reasoning
        "An apple.<|im_end|>",
        "<think>\nThree plus three makes six.\n</think>\n\nSix.<|im_end|>",
    ]


def test_qwen3_takes_reasoning_content_as_a_field_too() -> None:
    messages = [dict(m) for m in REASONING_TURNS]
    turns = list(turns_of(messages))
    turns[-1] = Turn("assistant", "Six.", 1, "Three plus three makes six.")
    assert trained_texts(prepared("qwen3"), tuple(turns))[-1] == (
        "<think>\nThree plus three makes six.\n</think>\n\nSix.<|im_end|>"
    )


def test_deepseek_r1_distill_trains_the_last_replys_reasoning_after_its_think_prompt() -> None:
    """Its template strips reasoning from every turn; its generation prompt opens the block
    ("<｜Assistant｜><think>\\n"), so the reply is trained as the model generates it."""
    tokenizer = prepared("deepseek_r1_distill")
    from tunehouse.trainer.tokenization import chat_profile

    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns_of(REASONING_TURNS))
    pieces = segments(encoded, tokenizer)
    assert pieces[-1]["trained"]
    assert pieces[-1]["text"] == "Three plus three makes six.\n</think>\n\nSix.<｜end▁of▁sentence｜>"
    assert pieces[-2]["text"].endswith("<｜Assistant｜><think>\n") and not pieces[-2]["trained"]


def test_a_template_without_reasoning_support_trains_the_think_block_as_text() -> None:
    texts = trained_texts(prepared("llama3_1"), turns_of(REASONING_TURNS))
    assert texts[-1] == "<think>\nThree plus three makes six.\n</think>\n\nSix.<|eot_id|>"


# -- continued pre-training ------------------------------------------------------------------------


@pytest.mark.parametrize("key", KEYS)
def test_pretraining_text_gets_the_special_tokens_the_tokenizer_itself_adds_then_eos(key: str) -> None:
    tokenizer = build_family_tokenizer(key)
    text = "The capital of France is Paris."
    ids, labels = encode_text(tokenizer, text)
    own = list(tokenizer(text)["input_ids"])
    assert ids[: len(own)] == own and labels == ids
    assert ids[-1] == tokenizer.eos_token_id
    prefix = FAMILIES[key].call_prefix
    assert ids[: len(prefix)] == tokenizer.convert_tokens_to_ids(list(prefix))


# -- through the trainer -----------------------------------------------------------------------------


def _family_spec(make_spec: Any, model_dir: Path, name: str, **hp: Any) -> Path:
    spec = make_spec(name, hp={"max_seq_len": 256, "batch_size": 4, "logging_steps": 1, **hp})
    data = json.loads(spec.read_text())
    rows = [{"messages": SYSTEM_THREE_TURNS}, {"messages": REASONING_TURNS}] * 2
    data["model_path"] = str(model_dir)
    data["train_files"] = [str(write_jsonl(spec.parent / "families.jsonl", rows))]
    spec.write_text(json.dumps(data))
    return spec


def _losses(events: list[dict[str, Any]]) -> list[float]:
    return [m["train_loss"] for m in of_type(events, "metrics") if "train_loss" in m]


@pytest.mark.parametrize("key", KEYS)
def test_lora_runs_finish_with_equal_loss_packed_and_unpacked(
    key: str, family_dirs: dict[str, Path], make_spec: Any
) -> None:
    packed = run_in_process(_family_spec(make_spec, family_dirs[key], f"{key}-packed", packing=True))
    unpacked = run_in_process(_family_spec(make_spec, family_dirs[key], f"{key}-unpacked", packing=False))
    assert packed[0] == 0 and unpacked[0] == 0, of_type(packed[1] + unpacked[1], "error")
    assert _losses(packed[1]) == pytest.approx(_losses(unpacked[1]), rel=1e-4)


@pytest.mark.parametrize("key", KEYS)
def test_full_fine_tuning_finishes_with_equal_loss_packed_and_unpacked(
    key: str, family_dirs: dict[str, Path], make_spec: Any
) -> None:
    results = []
    for packing in (True, False):
        spec = _family_spec(make_spec, family_dirs[key], f"{key}-full-{packing}", packing=packing)
        data = json.loads(spec.read_text())
        data["method"] = "full"
        spec.write_text(json.dumps(data))
        code, events = run_in_process(spec)
        assert code == 0, of_type(events, "error")
        assert of_type(events, "model")[0]["kind"] == "full"
        results.append(_losses(events))
    assert results[0] == pytest.approx(results[1], rel=1e-4)


# -- templates that refuse, models without one -------------------------------------------------------


def _without_template(model_dir: Path, dest: Path) -> Path:
    """A copy of a family model with no chat template, as a base (non-instruct) checkpoint ships."""
    import shutil

    shutil.copytree(model_dir, dest)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    for extra in ("chat_template.jinja", "chat_template.json"):
        (dest / extra).unlink(missing_ok=True)
    return dest


def test_a_conversation_the_template_refuses_is_a_data_error_with_its_line_before_the_model_loads(
    family_dirs: dict[str, Path], make_spec: Any, tmp_path: Path
) -> None:
    import shutil

    model = shutil.copytree(family_dirs["qwen2_5"], tmp_path / "strict")
    tokenizer = build_family_tokenizer("qwen2_5")
    refuse = (
        "{%- for m in messages if 'password' in m.content %}{{ raise_exception('no secrets') }}{%- endfor %}"
    )
    tokenizer.chat_template = refuse + tokenizer.chat_template
    tokenizer.save_pretrained(model)
    spec = _family_spec(make_spec, model, "refused")
    data = json.loads(spec.read_text())
    secret = [{"role": "user", "content": "my password is hunter2"}, {"role": "assistant", "content": "Ok."}]
    rows = [{"messages": SYSTEM_THREE_TURNS}] * 2 + [{"messages": secret}]
    data["train_files"] = [str(write_jsonl(spec.parent / "refused.jsonl", rows))]
    spec.write_text(json.dumps(data))
    code, events = run_in_process(spec)
    assert code == 2
    (error,) = of_type(events, "error")
    assert error["kind"] == "data"
    assert "refused.jsonl: line 3: messages:" in error["reason"] and "no secrets" in error["reason"]
    logs = [e["message"] for e in of_type(events, "log")]
    assert not any(m.startswith("model:") for m in logs)  # no weights were loaded


def test_a_model_without_a_chat_template_trains_chatml_with_a_warning(
    family_dirs: dict[str, Path], make_spec: Any, tmp_path: Path
) -> None:
    model = _without_template(family_dirs["llama3_1"], tmp_path / "llama-base")
    code, events = run_in_process(_family_spec(make_spec, model, "base-chatml"))
    assert code == 0, of_type(events, "error")
    logs = [e["message"] for e in of_type(events, "log")]
    assert any("no chat template" in m and "ChatML" in m for m in logs)


def test_chatml_on_a_base_model_keeps_its_bos_and_trains_the_reply_through_its_end(tmp_path: Path) -> None:
    model = _without_template(build_family_model("llama3_1", tmp_path / "src"), tmp_path / "base")
    from transformers import AutoTokenizer

    from tunehouse.trainer.tokenization import chat_profile

    tokenizer = AutoTokenizer.from_pretrained(model)
    _, warning = prepare_tokenizer(tokenizer, model, "chatml")
    assert warning
    encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns_of(SYSTEM_THREE_TURNS[1:3]))
    assert encoded.text.startswith("<|begin_of_text|><|im_start|>user\nReply with OK.")
    assert [s["text"] for s in segments(encoded, tokenizer) if s["trained"]] == ["OK.<|im_end|><|eot_id|>"]


def test_a_model_registered_to_refuse_a_default_template_fails_chat_data_before_loading(
    family_dirs: dict[str, Path], make_spec: Any, tmp_path: Path
) -> None:
    model = _without_template(family_dirs["llama3_1"], tmp_path / "llama-base")
    spec = _family_spec(make_spec, model, "base-refuse")
    data = json.loads(spec.read_text())
    data["chat_template_fallback"] = "refuse"
    spec.write_text(json.dumps(data))
    code, events = run_in_process(spec)
    assert code == 2
    (error,) = of_type(events, "error")
    assert error["kind"] == "data" and "no chat template" in error["reason"]
    assert "families.jsonl: line 1: messages:" in error["reason"]


def test_a_reply_that_begins_and_ends_like_the_first_sentinel_is_still_located_exactly() -> None:
    from tunehouse.trainer.chat_template import _SENTINELS

    odd = _SENTINELS[0] + " odd reply " + _SENTINELS[0]
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": odd}]
    assert trained_texts(prepared("qwen2_5"), turns_of(messages)) == [odd + "<|im_end|>"]
