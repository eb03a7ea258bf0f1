"""The transformers + PEFT engine's worker process: one loaded base model, and adapters over it, on a socket.

`python -m tunehouse.serving.worker SPEC.json`. The spec names the socket, the base model directory and, for a
full fine-tune, the weights that replace it. Once loaded, the socket appears and `ready` is printed on stdout.
Protocol: per connection one JSON line in, JSON lines out.
- `{"op": "generate", "adapter": NAME|null, "messages", "params"}` → `delta` {index, text}, `choice_end`
  {index, finish_reason, completion_tokens}, and last `usage` {prompt_tokens, completion_tokens} or `error`
  {message}. `adapter` null answers with the base model alone.
- `{"op": "load_adapter", "name", "path"}` and `{"op": "unload_adapter", "name"}` → `ok` or `error`.
The base is loaded once whatever the number of adapters (PEFT's named adapters, one made active per request).
Requests are served one at a time: the server's supervisor queues them and limits how many wait.
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


class Loaded:
    """The base model (a PeftModel once an adapter is loaded) and each adapter's tokenizer."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from transformers import AutoModelForCausalLM

        base = Path(spec["base_path"])
        if spec.get("base_model") == "tunehouse-tiny" and not (base / "config.json").is_file():
            from tunehouse.trainer.tiny import build_tiny_model

            build_tiny_model(base)
        full = spec.get("full_weights")
        source = Path(full) if full else base
        self.model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        self.model.eval()
        self.base_tokenizer = _tokenizer(source if (source / "tokenizer_config.json").is_file() else base)
        self.tokenizers: dict[str, Any] = {}

    def load_adapter(self, name: str, path: str) -> None:
        if name in self.tokenizers:
            return
        from peft import PeftModel

        if not self.tokenizers:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.eval()
        # The adapter's directory holds the tokenizer the run trained with.
        own = (Path(path) / "tokenizer_config.json").is_file()
        self.tokenizers[name] = _tokenizer(Path(path)) if own else self.base_tokenizer

    def unload_adapter(self, name: str) -> None:
        if self.tokenizers.pop(name, None) is None:
            return
        self.model.delete_adapter(name)
        if not self.tokenizers:  # PEFT cannot generate with no adapter left: back to the plain base
            self.model = self.model.unload()

    def select(self, adapter: str | None) -> tuple[Any, Any, contextlib.AbstractContextManager[Any]]:
        """The model, tokenizer and a context that makes `adapter` (None: no adapter) the one applied."""
        if adapter is None:
            off = self.model.disable_adapter() if self.tokenizers else contextlib.nullcontext()
            return self.model, self.base_tokenizer, off
        if adapter not in self.tokenizers:
            raise KeyError(f"no adapter {adapter!r} is loaded")
        self.model.set_adapter(adapter)
        return self.model, self.tokenizers[adapter], contextlib.nullcontext()


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    from tunehouse.trainer.chat_template import has_chat_template, install_chatml

    tokenizer = AutoTokenizer.from_pretrained(path)
    if not has_chat_template(tokenizer):
        install_chatml(tokenizer)
    return tokenizer


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


def handle(loaded: Loaded, request: dict[str, Any], send: Any) -> None:
    op = request.get("op", "generate")
    if op == "load_adapter":
        loaded.load_adapter(str(request["name"]), str(request["path"]))
        send({"type": "ok"})
    elif op == "unload_adapter":
        loaded.unload_adapter(str(request["name"]))
        send({"type": "ok"})
    elif op == "generate":
        model, tokenizer, context = loaded.select(request.get("adapter"))
        with context:
            serve_request(model, tokenizer, request, send)
    else:
        raise ValueError(f"unknown op {op!r}")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    torch.set_num_threads(max(1, int(spec.get("threads") or 1)))
    loaded = Loaded(spec)
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
                handle(loaded, json.loads(line), send)
            except _Abort:
                continue
            except Exception as exc:  # one bad request must not take the engine down
                with contextlib.suppress(_Abort):
                    send({"type": "error", "message": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main(sys.argv[1])
