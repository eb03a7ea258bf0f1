"""Which rank of a multi-process run this process is, read from torchrun's environment without torch
(the entry point must not pay for importing it before the data is checked)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .events import EventWriter


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


class RankWriter(EventWriter):
    """Events of a rank other than 0: only rank 0 reports, so these go nowhere, except an error, which
    goes to stderr (the launcher's log) so the reason a rank failed is not lost."""

    def __init__(self, rank: int) -> None:
        super().__init__(None, stream=None)
        self.rank = rank

    def error(self, reason: str, kind: Any) -> dict[str, Any]:
        print(f"rank {self.rank}: {reason}", file=sys.stderr, flush=True)
        return super().error(reason, kind)


def writer_for(events_path: Path, mirror: Any = None) -> EventWriter:
    rank = env_rank()
    return EventWriter(events_path, mirror=mirror) if rank == 0 else RankWriter(rank)
