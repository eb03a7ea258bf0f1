"""The status calls clients poll, answered ahead of the router: Qianfan V2 (whose Describe… actions share one
path), OpenAI's job retrieve and DashScope's fine-tune get.

These are most of a busy server's requests, and for each of them FastAPI's route matching, dependency
resolution and request wrappers cost more than reading and rendering the run. `PollingLane` sits innermost
among the middlewares, so the edge (request id, path normalisation, body limits), metrics and storage guard
see these requests as they see any other; it matches the same paths and methods the routes declare and calls
the same code the routes call. What a handler raises goes to the app's exception handlers, as it would from
the router; anything else (another path, another method) passes on to the router untouched.

Their reads (`polled_view`) run on the event loop where the database is PostgreSQL (store.loop_reads), and
in a worker thread (`quick_read`) otherwise.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import psycopg
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tunehouse.api.context import AppContext
from tunehouse.core.run_views import RunView, fetch_run_view, find_run_view

T = TypeVar("T")


@dataclass(frozen=True)
class RouteTemplate:
    """What the metrics read of a route: its path template (scope["route"] as the router would set it)."""

    path: str


@dataclass(frozen=True)
class PolledCall:
    method: str
    template: str  # the route's path template, e.g. /v1/fine_tuning/jobs/{job_id}
    pattern: re.Pattern[str]  # matches exactly the paths the template matches; groups are its parameters
    handle: Callable[..., Awaitable[Response]]  # (request, *path parameters), in the dialect's envelope


def template_pattern(template: str) -> re.Pattern[str]:
    """The paths a Starlette route template matches ({name} is one path segment, as its str convertor)."""
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "([^/]+)", re.escape(template)) + "$")


class PollingLane:
    def __init__(self, app: ASGIApp, calls: Sequence[PolledCall]) -> None:
        self.app = app
        self.calls = tuple(calls)
        self.routes = {c.template: RouteTemplate(c.template) for c in self.calls}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], scope["path"]
            for call in self.calls:
                if call.method != method:
                    continue
                m = call.pattern.match(path)
                if m is not None:
                    scope["route"] = self.routes[call.template]
                    request = Request(scope, receive)
                    try:
                        response = await call.handle(request, *m.groups())
                    except Exception as exc:
                        response = await _handled(request, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _handled(request: Request, exc: Exception) -> Response:
    """The app's own handler for `exc`, as Starlette's exception middleware picks it; re-raised without one
    (the edge then logs it and answers the dialect's internal error)."""
    handlers = getattr(request.app, "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls is Exception:
            break
        handler = handlers.get(cls)
        if handler is not None:
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
            return response  # type: ignore[no-any-return]
    raise exc


async def quick_read(ctx: AppContext, read: Callable[[Connection], T]) -> T:
    """Runs a read of a few indexed rows in a worker thread of this module's own small pool.

    Not blocking the event loop: measured under load, one read waiting for a busy database held every other
    request of the process behind it (p99 in seconds). Not through anyio's thread pool either: its
    per-call bookkeeping cost about as much as the read; a plain executor hand-off costs a fraction.
    The request's context (its id, for log lines) goes with the read."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(_readers(), context.run, _read, ctx, read)


def _read(ctx: AppContext, read: Callable[[Connection], T]) -> T:
    with ctx.db.read_connection() as conn:
        return read(conn)


_pool: ThreadPoolExecutor | None = None
# Enough to overlap database round trips; more would only queue on the GIL and the connection pool.
READ_THREADS = 8


def _readers() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="tunehouse-read")
    return _pool


class NeedsConnection(Exception):
    """A rendering asked OFFLINE for a query: it needs what the view does not hold."""


class _Offline:
    """What a rendering on the event loop gets for its connection: any query it makes raises NeedsConnection
    (its caller then renders again on a real one)."""

    def execute(self, *args: object, **kwargs: object) -> object:
        raise NeedsConnection

    def scalars(self, *args: object, **kwargs: object) -> object:
        raise NeedsConnection

    def scalar(self, *args: object, **kwargs: object) -> object:
        raise NeedsConnection


OFFLINE = _Offline()

Render = Callable[[Connection, RunView | None], T]


async def polled_view(
    ctx: AppContext, account_id: int, key: str, render: Render[T], checkpoints: bool = False
) -> T:
    """A polled run rendered as `render` renders its view (None: not found).

    On PostgreSQL the view is read on the event loop (store.loop_reads) and rendered there, with OFFLINE as
    the connection. A rendering that needs another query (a state shown with its events, a file key not yet
    known), SQLite, or a read that failed (a lost connection) takes the threaded path instead: the same read
    and rendering on a pooled connection, so what the caller gets never depends on the path."""
    reads = ctx.db.loop_reads()
    if reads is not None:
        try:
            view = await fetch_run_view(reads, ctx.db.engine.dialect, account_id, key, checkpoints)
        except psycopg.OperationalError:
            reads.drop_idle()  # the server may be gone for the others too
        except psycopg.Error:
            pass  # this read's own trouble (a parameter the server refuses): the threaded path answers it
        else:
            try:
                return render(OFFLINE, view)  # type: ignore[arg-type]
            except NeedsConnection:
                pass
    return await quick_read(ctx, lambda conn: render(conn, find_run_view(conn, account_id, key)))
