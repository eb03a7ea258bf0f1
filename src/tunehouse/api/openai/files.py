"""OpenAI files under /v1/files: dataset uploads every dialect can train on, and runs' result files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.openai import names
from tunehouse.api.openai.common import Caller, OpenAIError, OpenAIRoute, bad_cursor, limit_param, listing
from tunehouse.api.openai.common import openai_caller as caller_dep
from tunehouse.core import files as file_svc
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import strip_prefix
from tunehouse.store.models import File

router = APIRouter(prefix="/v1/files", route_class=OpenAIRoute)
PREFIX = names.FILE_PREFIX
LIST_DEFAULT = LIST_MAX = 10_000
EXPIRY_SECONDS = (3600, 2_592_000)

# Result CSVs are served in OpenAI's columns; their size is that of the translated content.
_results_by_sha: dict[str, bytes] = {}


def results_content(f: File) -> bytes:
    if f.sha256 not in _results_by_sha:
        _results_by_sha[f.sha256] = names.results_csv(Path(f.path).read_text(encoding="utf-8"))
    return _results_by_sha[f.sha256]


def content_of(f: File) -> bytes:
    if f.purpose == file_svc.RESULTS_PURPOSE:
        return results_content(f)
    return Path(f.path).read_bytes()


def _size(f: File) -> int:
    if f.purpose == file_svc.RESULTS_PURPOSE:
        try:
            return len(results_content(f))
        except OSError:
            return f.bytes
    return f.bytes


def render_file(f: File) -> dict[str, Any]:
    return {
        "id": PREFIX + f.key,
        "object": "file",
        "bytes": _size(f),
        "created_at": int(f.created_at.timestamp()),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": int(f.expires_at.timestamp()) if f.expires_at else None,
    }


def file_not_found(file_id: str, param: str | None = None, status: int = 404) -> OpenAIError:
    return OpenAIError(status, f"No such File object: {file_id}", param=param, code="file_not_found")


def lookup(s: Session, caller: Caller, file_id: str, param: str | None = None, status: int = 404) -> File:
    key = strip_prefix(file_id, PREFIX)
    if key is None:
        raise file_not_found(file_id, param, status)
    try:
        return file_svc.get_file(s, caller.account_id, key=key)
    except NotFound:
        raise file_not_found(file_id, param, status) from None


def _expiry(form: Any) -> int | None:
    """Seconds after creation at which the file expires, when expires_after was given."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise OpenAIError(
            400,
            "expires_after[anchor] must be 'created_at'",
            param="expires_after.anchor",
            code="invalid_value",
        )
    try:
        secs = int(str(seconds))
    except ValueError:
        secs = -1
    if not EXPIRY_SECONDS[0] <= secs <= EXPIRY_SECONDS[1]:
        raise OpenAIError(
            400,
            f"expires_after[seconds] must be an integer within [{EXPIRY_SECONDS[0]}, {EXPIRY_SECONDS[1]}]",
            param="expires_after.seconds",
            code="invalid_value",
        )
    return secs


@router.post("")
async def create_file(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    try:
        form = await request.form()
    except ClientDisconnect:
        raise
    except Exception:
        raise OpenAIError(400, "The body must be multipart/form-data.") from None
    part = form.get("file")
    purpose = form.get("purpose")
    if not isinstance(part, UploadFile):
        raise OpenAIError(400, "Missing required parameter: 'file'.", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise OpenAIError(400, "Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in file_svc.PURPOSES:
        raise OpenAIError(
            400,
            f"Invalid purpose {purpose!r}: this server accepts {', '.join(file_svc.PURPOSES)}.",
            param="purpose",
            code="invalid_value",
        )
    # The multipart parser spooled the part to disk; it is copied to storage a chunk at a time from there.
    if part.size is not None and part.size > file_svc.MAX_BYTES:
        raise OpenAIError(413, f"The file is larger than {file_svc.MAX_BYTES} bytes.", param="file")
    # The rule is checked before storing, so a bad expiry does not leave a file behind.
    expires_after_s = _expiry(form)
    name = part.filename or "upload.jsonl"

    def store() -> dict[str, Any]:
        with ctx.db.session() as s:
            row = file_svc.upload_stream(
                s,
                ctx.settings.files_dir,
                caller.account_id,
                name,
                part.file,
                purpose,
                expires_after_s=expires_after_s,
            )
            return render_file(row)

    try:
        return JSONResponse(await run_in_threadpool(store))
    except InvalidParameter as e:
        if e.field == "file":
            # The message names the file and every bad line (1-based), as §7 asks.
            raise OpenAIError(400, e.message, param="file", code="invalid_file_format") from None
        raise


@router.get("")
def list_files(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    limit = limit_param(request, LIST_DEFAULT, LIST_MAX)
    order = request.query_params.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise OpenAIError(400, f"order must be 'asc' or 'desc', got {order!r}", param="order")
    purpose = request.query_params.get("purpose") or None
    after = request.query_params.get("after") or None
    with ctx.db.session() as s:
        q = file_svc.files_query(caller.account_id, purpose=purpose)
        if after is not None:
            key = strip_prefix(after, PREFIX)
            start = s.scalar(q.where(File.key == key)) if key is not None else None
            if start is None:
                raise bad_cursor(after)
            q = q.where(File.id > start.id if order == "asc" else File.id < start.id)
        q = q.order_by(File.id.asc() if order == "asc" else File.id.desc()).limit(limit + 1)
        rows = list(s.scalars(q))
        data = [render_file(f) for f in rows[:limit]]
    return JSONResponse(listing(data, len(rows) > limit))


@router.get("/{file_id}")
def retrieve_file(
    file_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        return JSONResponse(render_file(lookup(s, caller, file_id)))


@router.delete("/{file_id}")
def delete_file(
    file_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    # Soft delete: jobs that trained on it keep their record (OpenAI lets such files go as well).
    with ctx.db.session() as s:
        row = lookup(s, caller, file_id)
        file_svc.delete_file(s, row)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


@router.get("/{file_id}/content")
def file_content(
    file_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> Response:
    with ctx.db.session() as s:
        row = lookup(s, caller, file_id)
    try:
        data = content_of(row)
    except OSError:
        raise OpenAIError(
            404, f"The content of {file_id} is no longer stored.", code="file_not_found"
        ) from None
    media = "text/csv" if row.purpose == file_svc.RESULTS_PURPOSE else "application/octet-stream"
    return Response(data, media_type=media)


@router.api_route(
    "/{file_id}/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False
)
def unknown_file_route(file_id: str, rest: str) -> Response:
    raise OpenAIError(404, f"Unknown route: /v1/files/{file_id}/{rest}")
