"""The HTTP application: every dialect's router over one core, with the scheduler beside it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tunehouse.api import console, dashscope, openai_files, openai_fine_tuning, qianfan_v1, qianfan_v2
from tunehouse.api.bce_auth import AuthFailure
from tunehouse.api.bearer_auth import BearerFailure
from tunehouse.api.context import AppContext
from tunehouse.api.envelopes import openai_error, qianfan_v2_error
from tunehouse.api.metrics import RunStateCollector
from tunehouse.api.storage_guard import StorageGuard
from tunehouse.config import Settings, load_settings
from tunehouse.core.registry import register_builtin
from tunehouse.core.secrets_box import SecretBox, load_master_key
from tunehouse.executors.local import LocalExecutor
from tunehouse.scheduler.scheduler import Scheduler
from tunehouse.store.db import Database

log = logging.getLogger(__name__)


def open_context(settings: Settings) -> AppContext:
    """Database migrated, built-in model registered, secrets box ready."""
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    db.migrate()
    with db.session() as s:
        register_builtin(s, settings.models_dir)
    return AppContext(settings=settings, db=db, box=SecretBox(load_master_key(settings.master_key_path)))


def create_app(settings: Settings | None = None, run_scheduler: bool = True) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = open_context(settings)
        app.state.ctx = ctx
        app.state.metrics = CollectorRegistry()
        app.state.metrics.register(RunStateCollector(ctx.db))
        scheduler = Scheduler(ctx.db, settings, LocalExecutor()) if run_scheduler else None
        if scheduler is not None:
            scheduler.start()
        app.state.ready = True
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown()
            ctx.db.dispose()

    app = FastAPI(title="Tunehouse", version="0.1.0", lifespan=lifespan)
    app.state.ready = False
    app.include_router(qianfan_v2.router)
    app.include_router(qianfan_v1.router)
    app.include_router(openai_files.router)
    app.include_router(openai_fine_tuning.router)
    app.include_router(dashscope.router)
    app.include_router(console.router)
    app.add_middleware(StorageGuard, settings=settings)

    @app.exception_handler(AuthFailure)
    async def _bce_failure(request: Request, exc: AuthFailure) -> JSONResponse:
        # V1 and V2 alike: the SDK raises on any 401/403, and the header message drives its hints.
        return qianfan_v2_error(exc.status, exc.code, exc.message, exc.header_message)

    @app.exception_handler(BearerFailure)
    async def _bearer_failure(request: Request, exc: BearerFailure) -> JSONResponse:
        return openai_error(401, exc.message, code="invalid_api_key")

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        ready = bool(getattr(app.state, "ready", False))
        return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(app.state.metrics).decode(), media_type=CONTENT_TYPE_LATEST)

    return app
