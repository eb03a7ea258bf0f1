"""OpenAI-style files under /v1/files: dataset uploads that every dialect can train on."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from tunehouse.api.bearer_auth import bearer_account
from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.envelopes import openai_error
from tunehouse.core import files as file_svc
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import strip_prefix
from tunehouse.store.models import File

router = APIRouter(prefix="/v1/files")
PREFIX = "file-"


def render_file(f: File) -> dict[str, Any]:
    return {
        "id": PREFIX + f.key,
        "object": "file",
        "bytes": f.bytes,
        "created_at": int(f.created_at.timestamp()),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
    }


def _not_found(file_id: str) -> JSONResponse:
    return openai_error(404, f"No such File object: {file_id}", param="id", code="file_not_found")


@router.post("")
async def create_file(
    file: UploadFile | None = None,
    purpose: str | None = Form(default=None),
    ctx: AppContext = Depends(get_ctx),
    account: int = Depends(bearer_account),
) -> JSONResponse:
    if file is None:
        return openai_error(400, "Missing required parameter: 'file'.", param="file")
    if not purpose:
        return openai_error(400, "Missing required parameter: 'purpose'.", param="purpose")
    data = await file.read()
    name = file.filename or "upload.jsonl"

    def store() -> File:
        with ctx.db.session() as s:
            return file_svc.upload_file(s, ctx.settings.files_dir, account, name, data, purpose)

    try:
        row = await run_in_threadpool(store)
    except InvalidParameter as e:
        code = "invalid_file_format" if e.field == "file" else "invalid_request_error"
        return openai_error(400, e.message, param=e.field, code=code)
    return JSONResponse(render_file(row))


@router.get("")
def list_files(ctx: AppContext = Depends(get_ctx), account: int = Depends(bearer_account)) -> JSONResponse:
    with ctx.db.session() as s:
        rows = file_svc.list_files(s, account)
    return JSONResponse(
        {"object": "list", "data": [render_file(f) for f in reversed(rows)], "has_more": False}
    )


@router.get("/{file_id}")
def retrieve_file(
    file_id: str, ctx: AppContext = Depends(get_ctx), account: int = Depends(bearer_account)
) -> JSONResponse:
    key = strip_prefix(file_id, PREFIX)
    try:
        if key is None:
            raise NotFound("file", file_id)
        with ctx.db.session() as s:
            row = file_svc.get_file(s, account, key=key)
    except NotFound:
        return _not_found(file_id)
    return JSONResponse(render_file(row))
