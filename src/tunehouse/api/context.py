"""What every request handler needs: settings, the database and the secret box."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tunehouse.config import Settings
from tunehouse.core.secrets_box import SecretBox
from tunehouse.store.db import Database


@dataclass
class AppContext:
    settings: Settings
    db: Database
    box: SecretBox


def ctx_of(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def get_ctx(request: Request) -> AppContext:
    """The dependency form. Async: FastAPI runs a plain-def dependency in a worker thread, per request."""
    return ctx_of(request)


def run_page_url(public_url: str, run_key: str) -> str:
    """The console's page for a run: the training-visualisation link every dialect hands out."""
    return f"{public_url.rstrip('/')}/console/runs/{run_key}"
