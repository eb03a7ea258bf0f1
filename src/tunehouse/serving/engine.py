"""The one interface every serving engine offers the supervisor: transformers + PEFT, and vLLM.

An engine is one process holding one base model (or one full fine-tune) and any number of LoRA adapters over
it, loaded and unloaded as deployments come and go. Nothing here imports torch: the server process holds
engines as handles to processes it started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class LoadSpec:
    """What to load: a base model directory and optionally weights over it."""

    deployment: str  # the deployment's key
    base_model: str
    base_path: str
    weights_path: str | None
    weights_kind: str  # "base" | "full" | "lora_adapter"

    @property
    def adapter(self) -> str | None:
        """The adapter's name in its engine (the deployment's key); None: the engine's own model answers."""
        return self.deployment if self.weights_kind == "lora_adapter" and self.weights_path else None

    def base(self) -> BaseSpec:
        full = self.weights_path if self.weights_kind == "full" else None
        return BaseSpec(self.base_model, self.base_path, full)


@dataclass(frozen=True)
class BaseSpec:
    """What one engine process loads: a base model, or a full fine-tune of it (which no adapter shares)."""

    base_model: str
    base_path: str
    full_weights: str | None = None

    @property
    def source(self) -> str:
        return self.full_weights or self.base_path


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int | None = None
    temperature: float | None = None  # None: 1.0, as OpenAI; 0: greedy
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
            "n": self.n,
        }


@dataclass(frozen=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True)
class ChoiceEnd:
    index: int
    finish_reason: str  # "stop" | "length"
    completion_tokens: int


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


GenerationEvent = Delta | ChoiceEnd | Usage


class EngineError(Exception):
    """The engine could not start or could not answer; the message says why."""


class Engine(Protocol):
    """One engine process. `start` returns once it can answer; `exit_reason` is None while it lives."""

    name: str

    async def start(self, base: BaseSpec, workdir: Path) -> None: ...

    async def load_adapter(self, name: str, path: str) -> None:
        """Makes `name` callable; loading a name already loaded is a no-op."""
        ...

    async def unload_adapter(self, name: str) -> None: ...

    def generate(
        self, adapter: str | None, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[GenerationEvent]:
        """With `adapter` (a loaded adapter's name) over the base, or the loaded model alone when None."""
        ...

    async def wait_exit(self) -> str:
        """Returns, with the reason, when the engine's process ends."""
        ...

    def exit_reason(self) -> str | None: ...

    def pid(self) -> int | None:
        """The engine's process (its memory is what a deployment costs)."""
        ...

    async def stop(self) -> None:
        """End it and free its memory."""
        ...
