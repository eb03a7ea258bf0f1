"""The one interface every serving engine offers the supervisor (transformers + PEFT now, vLLM later).

Nothing here imports torch: the server process holds engines as handles to processes it started.
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
    """One loaded deployment. `start` returns once it can answer; `exit_reason` is None while it lives."""

    name: str

    async def start(self, spec: LoadSpec, workdir: Path) -> None: ...

    def generate(
        self, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[GenerationEvent]: ...

    async def wait_exit(self) -> str:
        """Returns, with the reason, when the engine's process ends."""
        ...

    def exit_reason(self) -> str | None: ...

    async def stop(self) -> None:
        """End it and free its memory."""
        ...
