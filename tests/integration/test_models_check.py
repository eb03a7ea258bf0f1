"""`tunehouse models check`: a registered model's rendering of a conversation, cut into trained and
untrained pieces, through the real CLI over real-template family models (SQLite)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.families import SYSTEM_THREE_TURNS, build_family_model
from tunehouse.trainer.preview import EXAMPLE_CONVERSATION

EXAMPLE = [{"role": t.role, "content": t.content} for t in EXAMPLE_CONVERSATION]


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = {
            **os.environ,
            "TUNEHOUSE_HOME": str(home),
            "TUNEHOUSE_DATABASE_URL": f"sqlite:///{home / 'tunehouse.db'}",
        }

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tunehouse", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("check-models")
    return {key: build_family_model(key, root / key) for key in ("mistral_v0_3", "gemma2")}


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> Cli:
    run = Cli(tmp_path_factory.mktemp("check-home"))
    for name, key in (("mistral", "mistral_v0_3"), ("gemma", "gemma2")):
        assert run("models", "add", name, str(models[key])).returncode == 0
    return run


def rendering(model_dir: Path, messages: list[dict[str, str]]) -> str:
    """The template's own rendering. Neither family's template takes a system prompt (Gemma-2 refuses
    it, Mistral v0.3 drops it unless the conversation ends on a user turn), so, as the trainer does,
    it is folded into the first user turn."""
    from transformers import AutoTokenizer

    system, first_user, *rest = messages
    assert system["role"] == "system" and first_user["role"] == "user"
    folded = [{"role": "user", "content": f"{system['content']}\n\n{first_user['content']}"}, *rest]
    return str(AutoTokenizer.from_pretrained(model_dir).apply_chat_template(folded, tokenize=False))


def replies(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def check_json(cli: Cli, *args: str) -> dict[str, Any]:
    out = cli("models", "check", *args, "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_json_cuts_the_builtin_example_into_pieces_that_train_exactly_the_replies(
    cli: Cli, models: dict[str, Path]
) -> None:
    report = check_json(cli, "mistral")
    assert report["model"] == "mistral"
    segments = report["segments"]
    assert "".join(s["text"] for s in segments) == rendering(models["mistral_v0_3"], EXAMPLE)
    # Mistral's template puts a space before each reply; SentencePiece folds it into the reply's first token.
    assert [s["text"] for s in segments if s["trained"]] == [f" {r}</s>" for r in replies(EXAMPLE)]


def test_a_conversation_file_replaces_the_example(cli: Cli, models: dict[str, Path], tmp_path: Path) -> None:
    file = tmp_path / "one.jsonl"
    file.write_text(json.dumps({"messages": SYSTEM_THREE_TURNS}) + "\n")
    segments = check_json(cli, "gemma", "--conversation", str(file))["segments"]
    assert "".join(s["text"] for s in segments) == rendering(models["gemma2"], SYSTEM_THREE_TURNS)
    assert [s["text"] for s in segments if s["trained"]] == [
        f"{r}<end_of_turn>" for r in replies(SYSTEM_THREE_TURNS)
    ]


def test_the_human_output_shows_the_rendering_and_the_trained_share(
    cli: Cli, models: dict[str, Path]
) -> None:
    out = cli("models", "check", "gemma")
    assert out.returncode == 0, out.stderr
    assert rendering(models["gemma2"], EXAMPLE).strip() in out.stdout
    assert " tokens trained" in out.stdout


def test_a_bad_line_in_the_conversation_file_exits_2_naming_the_line(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "bad.jsonl"
    good = {"messages": SYSTEM_THREE_TURNS[1:3]}
    file.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user"}]}) + "\n")
    out = cli("models", "check", "mistral", "--conversation", str(file), "--json")
    assert out.returncode == 2 and out.stdout == ""
    assert "line 2" in out.stderr and "content" in out.stderr


def test_an_unknown_model_exits_2_saying_so(cli: Cli) -> None:
    out = cli("models", "check", "no-such-model")
    assert out.returncode == 2
    assert "no model named 'no-such-model'" in out.stderr


def test_a_model_without_a_template_registered_to_refuse_a_default_exits_2(
    cli: Cli, models: dict[str, Path], tmp_path: Path
) -> None:
    base = tmp_path / "mistral-base"
    shutil.copytree(models["mistral_v0_3"], base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    added = cli("models", "add", "mistral-base", str(base), "--chat-template-fallback", "refuse")
    assert added.returncode == 0, added.stderr
    out = cli("models", "check", "mistral-base")
    assert out.returncode == 2
    assert "no chat template" in out.stderr and "refuses" in out.stderr
