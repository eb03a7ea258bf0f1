"""Following a run's record as it grows: the one loop behind every live event stream.

The DashScope log stream and the console's server-sent events read the same way: the run's state, then
its events after the last one sent, in batches, until the run has ended and every event up to its end has
gone out. What each shows of a batch (a log line, a chart point, a snapshot of the run) is its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy.orm import Session

from tunehouse.core.errors import NotFound
from tunehouse.core.events import events_page
from tunehouse.core.states import TERMINAL, RunState
from tunehouse.store.models import Event, Run

V = TypeVar("V")

POLL_S = 0.5
KEEPALIVE_S = 15.0
BATCH = 500


@dataclass(frozen=True)
class Tick(Generic[V]):
    """One read of the run: its new events (in seq order), the caller's view of it, and whether it is over."""

    events: list[Event]
    view: V
    ended: bool  # the run has ended and no event of it is left to send


class KeepAlive:
    """Nothing new for a while: a stream sends a comment so proxies and clients keep the connection."""


KEEP_ALIVE = KeepAlive()


def has_ended(run: Run) -> bool:
    return RunState(run.state) in TERMINAL


class RunFollower(Generic[V]):
    """Reads a run's new events in batches. `find` returns the run (None or NotFound: it is gone and the
    stream ends), `view` what the caller shows of it besides the events, `ended` when to stop following."""

    def __init__(
        self,
        sessions: Callable[[], AbstractContextManager[Session]],
        find: Callable[[Session], Run | None],
        view: Callable[[Session, Run], V],
        after: int = 0,
        ended: Callable[[Run], bool] = has_ended,
        poll_s: float = POLL_S,
        keepalive_s: float = KEEPALIVE_S,
        batch: int = BATCH,
    ) -> None:
        self._sessions, self._find, self._view, self._ended = sessions, find, view, ended
        self.after = after
        self.poll_s, self.keepalive_s, self.batch = poll_s, keepalive_s, batch

    def poll(self) -> Tick[V] | None:
        """One read (blocking); None when the run is not there (any more)."""
        with self._sessions() as s:
            try:
                run = self._find(s)
            except NotFound:
                run = None
            if run is None or run.deleted_at is not None:
                return None
            # The state is read before the events: once it has ended, every event up to its end is in
            # this batch or a later one.
            ended = self._ended(run)
            events = events_page(s, run, after_seq=self.after, limit=self.batch)
            view = self._view(s, run)
        if events:
            self.after = events[-1].seq
        return Tick(events, view, ended and len(events) < self.batch)

    async def ticks(
        self,
        first: Tick[V] | None = None,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[Tick[V] | KeepAlive]:
        """Every read until the run has ended (or is gone, or the client left), with a keep-alive after
        each `keepalive_s` of quiet. `first` is a read already made (e.g. to answer 404 before streaming)."""
        tick = first if first is not None else await anyio.to_thread.run_sync(self.poll)
        quiet = 0.0
        while tick is not None:
            yield tick
            if tick.ended:
                return
            if len(tick.events) < self.batch:  # a full batch: more are waiting, read on at once
                if tick.events:
                    quiet = 0.0
                else:
                    quiet += self.poll_s
                    if quiet >= self.keepalive_s:
                        quiet = 0.0
                        yield KEEP_ALIVE
                await anyio.sleep(self.poll_s)
                if disconnected is not None and await disconnected():
                    return
            tick = await anyio.to_thread.run_sync(self.poll)
