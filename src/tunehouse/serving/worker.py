"""The transformers + PEFT engine's worker process: one loaded model, answering on a unix socket.

`python -m tunehouse.serving.worker SPEC.json`. The spec names the socket, the base model directory and
optionally weights over it (a PEFT adapter dir or full weights). Once loaded, the socket appears and
`ready` is printed on stdout. Protocol: per connection one JSON line in (`{"messages", "params"}`), JSON
lines out: `delta` {index, text}, `choice_end` {index, finish_reason, completion_tokens}, and last `usage`
{prompt_tokens, completion_tokens} or `error` {message}. Requests are served one at a time: the server's
supervisor queues them and limits how many wait.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch

DEFAULT_MAX_TOKENS = 256


class _Abort(Exception):
    """Raised from the streamer to end a generation early (a stop string, or the caller left)."""


def load(spec: dict[str, Any]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunehouse.trainer.chat_template import has_chat_template, install_chatml

    base = Path(spec["base_path"])
    if spec.get("base_model") == "tunehouse-tiny" and not (base / "config.json").is_file():
        from tunehouse.trainer.tiny import build_tiny_model

        build_tiny_model(base)
    weights, kind = spec.get("weights_path"), spec.get("weights_kind", "base")
    source = Path(weights) if kind == "full" and weights else base
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if kind == "lora_adapter" and weights:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights)
    model.eval()
    # The adapter's directory holds the tokenizer the run trained with.
    tok_dir = Path(weights) if weights and (Path(weights) / "tokenizer_config.json").is_file() else base
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    if not has_chat_template(tokenizer):
        install_chatml(tokenizer)
    return model, tokenizer


def prompt_ids(tokenizer: Any, messages: list[dict[str, Any]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class _Streamer:
    """transformers' streamer protocol: decodes new tokens, holds back what may begin a stop string."""

    def __init__(self, tokenizer: Any, stops: list[str], emit: Any) -> None:
        self.tokenizer, self.stops, self.emit = tokenizer, stops, emit
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already emitted
        self.prompt_seen = False
        self.stopped = False
        self.hold = max((len(x) for x in stops), default=1) - 1

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands the prompt first
            self.prompt_seen = True
            return
        self.ids.extend(int(t) for t in value.reshape(-1).tolist())
        text = self._text()
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                self._send(text[:at])
                self.stopped = True
                raise _Abort
        # An incomplete UTF-8 sequence decodes as U+FFFD: wait for the rest.
        safe = len(text) - self.hold
        if text.endswith("\ufffd"):
            safe = min(safe, len(text) - 1)
        self._send(text[:safe])

    def end(self) -> None:
        self._send(self._text())

    def _text(self) -> str:
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _send(self, upto: str) -> None:
        if len(upto) > self.sent:
            self.emit(upto[self.sent :])
            self.sent = len(upto)


def _content(message: dict[str, Any]) -> dict[str, str]:
    content = message.get("content")
    if isinstance(content, list):  # [{type: "text", text}]
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    role = message.get("role", "user")
    return {"role": "system" if role == "developer" else str(role), "content": str(content or "")}


def serve_request(model: Any, tokenizer: Any, request: dict[str, Any], send: Any) -> None:
    params = request.get("params") or {}
    messages = [_content(m) for m in request["messages"]]
    ids = prompt_ids(tokenizer, messages)
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    max_new = int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)
    if limit:
        max_new = max(1, min(max_new, limit - len(ids)))
    temperature = params.get("temperature")
    temperature = 1.0 if temperature is None else float(temperature)
    top_p = params.get("top_p")
    top_p = 1.0 if top_p is None else float(top_p)
    stops = [x for x in (params.get("stop") or []) if x]
    if params.get("seed") is not None:
        torch.manual_seed(int(params["seed"]))
    sample = temperature > 0
    total = 0
    for index in range(int(params.get("n") or 1)):
        streamer = _Streamer(
            tokenizer, stops, lambda text, i=index: send({"type": "delta", "index": i, "text": text})
        )
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": sample, "streamer": streamer}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        with torch.inference_mode(), contextlib.suppress(_Abort):
            model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
                **kwargs,
            )
        produced = len(streamer.ids)
        total += produced
        ended_on_eos = bool(streamer.ids) and streamer.ids[-1] in _eos_ids(model, tokenizer)
        reason = "stop" if streamer.stopped or ended_on_eos or produced < max_new else "length"
        send({"type": "choice_end", "index": index, "finish_reason": reason, "completion_tokens": produced})
    send({"type": "usage", "prompt_tokens": len(ids), "completion_tokens": total})


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    torch.set_num_threads(max(1, int(spec.get("threads") or 1)))
    model, tokenizer = load(spec)
    path = spec["socket"]
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)  # only this user's processes (the server) may call the engine
    server.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            reader = conn.makefile("rb")

            def send(obj: dict[str, Any], conn: socket.socket = conn) -> None:
                try:
                    conn.sendall((json.dumps(obj) + "\n").encode())
                except OSError:
                    raise _Abort from None  # the caller went away: stop generating for it

            try:
                line = reader.readline()
                if not line:
                    continue
                serve_request(model, tokenizer, json.loads(line), send)
            except _Abort:
                continue
            except Exception as exc:  # one bad request must not take the engine down
                with contextlib.suppress(_Abort):
                    send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main(sys.argv[1])
