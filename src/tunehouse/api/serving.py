"""What every dialect's model-calling route shares: the server's supervisor, and a request's generation
events gathered into whole answers (each dialect renders them, and its streams, in its own shape)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from tunehouse.serving.engine import ChoiceEnd, Delta, GenerationEvent, Usage
from tunehouse.serving.supervisor import Supervisor


def supervisor_of(request: Request) -> Supervisor:
    found: Supervisor = request.app.state.supervisor
    return found


@dataclass
class Answer:
    texts: list[str]
    finish_reasons: list[str]
    usage: Usage


async def gather(events: AsyncIterator[GenerationEvent], n: int) -> Answer:
    """The whole answer of `n` choices; an EngineError raised by the engine passes through."""
    answer = Answer([""] * n, ["stop"] * n, Usage(0, 0))
    async for ev in events:
        if isinstance(ev, Delta):
            answer.texts[ev.index] += ev.text
        elif isinstance(ev, ChoiceEnd):
            answer.finish_reasons[ev.index] = ev.finish_reason
        else:
            answer.usage = ev
    return answer
