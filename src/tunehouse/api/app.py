"""The HTTP application: every dialect's router over one core, with the scheduler beside it."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunehouse.api.console import routes as console
from tunehouse.api.console import serving as console_serving
from tunehouse.api.context import AppContext
from tunehouse.api.dashscope import compatible as dashscope_compatible
from tunehouse.api.dashscope import deployments as dashscope_deployments
from tunehouse.api.dashscope import generation as dashscope_generation
from tunehouse.api.dashscope import routes as dashscope
from tunehouse.api.dialects import dialect_error, dialect_of
from tunehouse.api.edge import EdgeMiddleware
from tunehouse.api.limits import echo, load_limits
from tunehouse.api.metrics import MULTIPROC_ENV, RequestMetrics, RouteNoter, build_registry
from tunehouse.api.openai import chat as openai_chat
from tunehouse.api.openai import files as openai_files
from tunehouse.api.openai import fine_tuning as openai_fine_tuning
from tunehouse.api.openai import models as openai_models
from tunehouse.api.openapi import build_openapi
from tunehouse.api.polling import PollingLane
from tunehouse.api.qianfan import chat as qianfan_chat
from tunehouse.api.qianfan import errors as qianfan_errors
from tunehouse.api.qianfan import publishing as qianfan_publishing
from tunehouse.api.qianfan import services as qianfan_services
from tunehouse.api.qianfan import v1 as qianfan_v1
from tunehouse.api.qianfan import v2 as qianfan_v2
from tunehouse.api.qianfan.signing import AuthFailure
from tunehouse.api.rate_limit import RateLimited, limiter_for
from tunehouse.api.storage_guard import StorageGuard
from tunehouse.config import Settings, load_settings
from tunehouse.core import placement
from tunehouse.core.errors import InvalidParameter
from tunehouse.core.registry import register_builtin
from tunehouse.core.secrets_box import SecretBox, load_master_key
from tunehouse.executors.factory import build_executor, refusal_of
from tunehouse.scheduler.scheduler import Scheduler
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.db import Database, lock_setup

log = logging.getLogger(__name__)

# "0": this process serves the API only (`serve --no-scheduler`); set by `serve` for its worker processes.
RUN_SCHEDULER_ENV = "TUNEHOUSE_RUN_SCHEDULER"


def open_context(settings: Settings) -> AppContext:
    """Database migrated, built-in model registered, secrets box ready."""
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    db.migrate()
    with db.session() as s:
        lock_setup(s)  # two processes starting together must not both add the built-in model
        register_builtin(s, settings.models_dir)
    return AppContext(settings=settings, db=db, box=SecretBox(load_master_key(settings.master_key_path)))


def settle_heap() -> None:
    """What start-up built (modules, routes, schemas: about 10^5 objects) lives as long as the process; in the
    permanent generation the cyclic collector no longer walks it, so a full collection costs what the requests
    since left behind instead of 40-80 ms, which it cost with the heap of start-up in it: at 400 polls/s
    such a pause put every request queued behind it over 50 ms."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, run_scheduler: bool = True, settle: bool = False) -> FastAPI:
    """`settle`: the process exists to serve this app (see settle_heap); not where apps come and go, as in
    tests, whose frozen leftovers would never be collected."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = open_context(settings)
        app.state.ctx = ctx
        app.state.metrics = build_registry(ctx.db, os.environ.get(MULTIPROC_ENV))
        executor = build_executor(settings)
        # A run that can never be placed is refused when it is created, in the caller's dialect.
        placement.install(refusal_of(executor))
        scheduler = Scheduler(ctx.db, settings, executor) if run_scheduler else None
        if scheduler is not None:
            scheduler.start()
        app.state.supervisor = Supervisor(ctx.db, settings.home / "deployments")
        app.state.supervisor.start_reconciling()  # frees engines of deployments deleted from the CLI
        if settle:
            settle_heap()
        app.state.ready = True
        try:
            yield
        finally:
            await app.state.supervisor.shutdown()  # engines hold memory: none outlives the server
            if scheduler is not None:
                scheduler.shutdown()
            await ctx.db.close_loop_reads()
            ctx.db.dispose()
            placement.install(None)

    limits = load_limits()
    # FastAPI's own OpenTelemetry hooks are unused here (/metrics is ours); off, they cost no per-request
    # check of the global providers.
    app = FastAPI(
        title="Tunehouse",
        version="0.1.0",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.ready = False
    app.state.limits = limits
    app.state.rate_limiter = limiter_for(limits)
    # Innermost: the polled status calls, answered without the router (see api.polling).
    app.add_middleware(PollingLane, calls=[qianfan_v2.POLLED, openai_fine_tuning.POLLED, dashscope.POLLED])
    app.add_middleware(RouteNoter)  # sees the route the router (or the lane) matched
    app.add_middleware(StorageGuard, settings=settings)
    app.add_middleware(EdgeMiddleware, limits=limits)
    app.add_middleware(RequestMetrics)  # outermost: it counts what the edge refuses too
    app.include_router(qianfan_v2.router)
    app.include_router(qianfan_v1.router)
    app.include_router(qianfan_publishing.router)
    app.include_router(qianfan_services.router)
    app.include_router(qianfan_chat.router)
    app.include_router(qianfan_chat.v2_router)
    app.include_router(openai_files.router)
    app.include_router(openai_fine_tuning.router)
    app.include_router(openai_models.router)
    app.include_router(openai_chat.router)
    app.include_router(dashscope.router)
    app.include_router(dashscope_deployments.router)
    app.include_router(dashscope_generation.router)
    app.include_router(dashscope_compatible.router)
    app.include_router(console.router)
    app.include_router(console_serving.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(AuthFailure)
    async def _bce_failure(request: Request, exc: AuthFailure) -> JSONResponse:
        return qianfan_errors.auth_failure(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, exc: StarletteHTTPException) -> Response:
        # No route of the dialect answered: unknown path or method, in the dialect's own envelope.
        dialect = dialect_of(request.url.path)
        if exc.status_code == 404:
            return dialect_error(dialect, "not_found", f"Unknown route: {echo(request.url.path)}")
        if exc.status_code == 405:
            resp = dialect_error(dialect, "method", f"{echo(request.method)} is not allowed on this path.")
            if exc.headers and "allow" in {k.lower() for k in exc.headers}:
                resp.headers.update(exc.headers)
            return resp
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header"))
        return dialect_error(
            dialect_of(request.url.path), "invalid", f"{echo(where)}: {err.get('msg', 'invalid value')}"
        )

    @app.exception_handler(RateLimited)
    async def _rate_limited(request: Request, exc: RateLimited) -> Response:
        return dialect_error(dialect_of(request.url.path), "rate_limited", exc.message, headers=exc.headers)

    @app.exception_handler(InvalidParameter)
    async def _invalid_parameter(request: Request, exc: InvalidParameter) -> Response:
        # Raised before a dialect's own handling, e.g. by the JSON body reader.
        return dialect_error(dialect_of(request.url.path), "invalid", f"{exc.field}: {exc.message}")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        ready = bool(getattr(app.state, "ready", False))
        return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        # Collecting reads the store (and may run nvidia-smi): off the event loop.
        body = await run_in_threadpool(generate_latest, app.state.metrics)
        return PlainTextResponse(body.decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """The app as `tunehouse serve` hands it to uvicorn, which may start it in several worker processes."""
    from tunehouse.logs import configure_logging

    configure_logging()  # a worker process uvicorn spawned starts with no logging set up
    return create_app(
        load_settings(), run_scheduler=os.environ.get(RUN_SCHEDULER_ENV, "1") != "0", settle=True
    )
