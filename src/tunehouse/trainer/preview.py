"""What a run would learn from one conversation: the model's rendering, cut into trained and untrained pieces.

``python -m tunehouse.trainer.preview MODEL_DIR [--conversation FILE] [--fallback chatml|refuse]`` prints
``{"segments": [{"text", "trained"}, ...], "warning": ...}`` as one JSON object. The console runs it as a
subprocess, because the server never loads transformers; ``tunehouse models check`` calls ``preview``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tunehouse.contract.datasets import DataError, Turn, load_records

EXAMPLE_CONVERSATION: tuple[Turn, ...] = (
    Turn("system", "You are a concise assistant for a bicycle shop."),
    Turn("user", "Do you repair flat tyres?"),
    Turn("assistant", "Yes. A flat tyre repair takes about twenty minutes."),
    Turn("user", "Reply with OK if you are open on Sunday."),
    Turn("assistant", "OK."),
    Turn("user", "How much is a new inner tube?"),
    Turn("assistant", "An inner tube costs 8 euros, fitted."),
)


def conversation_from_file(path: Path) -> tuple[Turn, ...]:
    """The first row of a chat (or Qianfan prompt/response) JSONL file, validated like training data."""
    _, records = load_records(path, {"chat", "prompt_response"})
    return records[0].turns


def preview(model_dir: Path, turns: tuple[Turn, ...], fallback: str = "chatml") -> dict[str, Any]:
    """Render ``turns`` with the model's tokenizer and template; DataError if the template refuses them."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .chat_template import TemplateError, encode_conversation, segments
    from .tokenization import chat_profile, prepare_tokenizer

    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    profile, warning = prepare_tokenizer(tokenizer, model_dir, fallback)
    if profile is None:
        raise DataError(
            "the model has no chat template and its registry entry refuses a default (ChatML); "
            "chat data cannot be trained on it"
        )
    try:
        encoded = encode_conversation(tokenizer, chat_profile(tokenizer), turns)
    except TemplateError as exc:
        raise DataError(str(exc)) from exc
    pieces = segments(encoded, tokenizer)
    trained = sum(1 for label in encoded.labels if label != -100)
    return {
        "segments": pieces,
        "tokens": len(encoded.ids),
        "trained_tokens": trained,
        "warning": warning,
    }


def _local(model_dir: str) -> Path:
    """A model in the object store is read from this node's copy of it (fetched once)."""
    from tunehouse.config import load_settings
    from tunehouse.storage import cached_dir, is_url

    return cached_dir(model_dir, load_settings().model_cache_dir) if is_url(model_dir) else Path(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunehouse.trainer.preview")
    parser.add_argument("model_dir", help="a model directory, local or s3:// (this node's cached copy)")
    parser.add_argument("--conversation", type=Path, default=None)
    parser.add_argument("--fallback", choices=["chatml", "refuse"], default="chatml")
    args = parser.parse_args(argv)
    try:
        turns = conversation_from_file(args.conversation) if args.conversation else EXAMPLE_CONVERSATION
        out = preview(_local(args.model_dir), turns, args.fallback)
    except DataError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
