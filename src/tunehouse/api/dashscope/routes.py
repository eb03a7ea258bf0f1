"""DashScope (Alibaba Model Studio) fine-tunes and files under `/api/v1`, translated to and from the core.

A DashScope fine-tune job is a core run; creating one creates its job and first run together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import Connection, Select, func, select
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from tunehouse.api.context import AppContext, ctx_of, get_ctx
from tunehouse.api.dashscope import names
from tunehouse.api.dashscope.auth import Caller, ds_caller
from tunehouse.api.dashscope.errors import ApiError, DashScopeRoute, ds_error, ds_guarded
from tunehouse.api.dashscope.schemas import CreateFineTune, optional_str
from tunehouse.api.envelopes import request_id
from tunehouse.api.fast_json import FastJSONResponse
from tunehouse.api.json_body import json_object
from tunehouse.api.limits import MAX_QUERY_INT, echo
from tunehouse.api.polling import PolledCall, polled_view, template_pattern
from tunehouse.core import catalog
from tunehouse.core import files as file_svc
from tunehouse.core import jobs as job_svc
from tunehouse.core import runs as run_svc
from tunehouse.core.errors import (
    InvalidParameter,
    NotFound,
)
from tunehouse.core.file_keys import file_keys
from tunehouse.core.follow import RunFollower, Tick
from tunehouse.core.ids import strip_prefix
from tunehouse.core.registry import resolve_model
from tunehouse.core.run_views import RunView, view_of
from tunehouse.core.states import TERMINAL, RunState
from tunehouse.store.models import Event, File, Job, Run

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 300 * 1024 * 1024
PURPOSE_ALIASES = {"fine-tune": "fine-tune", "fine_tune": "fine-tune"}
DEFAULT_WORKSPACE = "default"
FAILED_CODE = "TrainingFailed"
PAGE_SIZE_MAX = 100
LOG_LINES_MAX = 1000
# Generated names must stay within the models table's 128 characters.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


def _ok(key: str, payload: dict[str, Any], response: type[JSONResponse] = JSONResponse) -> JSONResponse:
    rid = request_id()
    return response({"request_id": rid, key: payload}, headers={"X-Request-Id": rid})


def _output(payload: dict[str, Any]) -> JSONResponse:
    return _ok("output", payload)


def _data(payload: dict[str, Any]) -> JSONResponse:
    return _ok("data", payload)


router = APIRouter(prefix="/api/v1", route_class=DashScopeRoute)


# ---- paging ----------------------------------------------------------------------------------------


def _int_param(request: Request, name: str, default: int, low: int, high: int = MAX_QUERY_INT) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "InvalidParameter", f"{name} must be an integer, got {echo(raw)!r}") from None
    if value < low or value > high:
        raise ApiError(400, "InvalidParameter", f"{name} must be within [{low}, {high}], got {echo(value)}")
    return value


def _paging(request: Request) -> tuple[int, int]:
    return (
        _int_param(request, "page_no", 1, 1),
        _int_param(request, "page_size", 10, 1, PAGE_SIZE_MAX),
    )


def _page(s: Session, q: Select[Any], order: Any, page_no: int, page_size: int) -> tuple[int, list[Any]]:
    total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = list(s.scalars(q.order_by(*order).offset((page_no - 1) * page_size).limit(page_size)))
    return total, rows


# ---- files -----------------------------------------------------------------------------------------

_md5_by_sha: dict[str, str] = {}


def _md5(f: File) -> str:
    # Blobs are stored by content hash, so an md5 computed once holds for every file with that content.
    if f.sha256 not in _md5_by_sha:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with file_svc.open_content(f) as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            return ""
        _md5_by_sha[f.sha256] = digest.hexdigest()
    return _md5_by_sha[f.sha256]


def render_file(f: File) -> dict[str, Any]:
    created = names.ds_time(f.created_at)
    return {
        "file_id": names.FILE_PREFIX + f.key,
        "name": f.filename,
        "size": f.bytes,
        "purpose": f.purpose,
        "description": f.description,
        "md5": _md5(f),
        "gmt_create": created,
        "upload_time": created,
    }


def _file_not_found() -> ApiError:
    # The hosted service answers 400 here, not 404; the 2.x SDK recognises the message.
    return ApiError(400, "InvalidParameter", "File not found.")


def _file(s: Session, caller: Caller, file_id: str) -> File:
    key = strip_prefix(file_id, names.FILE_PREFIX)
    if key is None:
        raise _file_not_found()
    try:
        return file_svc.get_file(s, caller.account_id, key=key, workspace=caller.workspace)
    except NotFound:
        raise _file_not_found() from None


@router.post("/files")
async def upload_files(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    try:
        form = await request.form()
    except ClientDisconnect:
        raise
    except Exception:
        raise ApiError(400, "InvalidParameter", "the body must be multipart/form-data") from None
    parts = [p for p in form.getlist("files") if isinstance(p, UploadFile)]
    if not parts:
        raise ApiError(
            400, "InvalidParameter", "Missing files: send one multipart part named 'files' per file"
        )
    descriptions = [d for d in form.getlist("descriptions") if isinstance(d, str)]
    raw_purpose = form.get("purpose")
    purpose = PURPOSE_ALIASES.get(
        raw_purpose if isinstance(raw_purpose, str) and raw_purpose else "fine-tune"
    )
    if purpose is None:
        raise ApiError(
            400, "InvalidParameter", f"purpose {raw_purpose!r} is not supported by this server; use fine-tune"
        )
    uploaded: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    for i, part in enumerate(parts):
        name = part.filename or f"file-{i + 1}.jsonl"
        if part.size is not None and part.size > MAX_FILE_BYTES:
            failed.append({"name": name, "code": "BadRequest.TooLarge", "message": "file exceeds 300MB"})
            continue
        description = descriptions[i] if i < len(descriptions) else ""

        def store(name: str = name, part: UploadFile = part, description: str = description) -> str:
            # One transaction per file: a bad file does not take the good ones down with it.
            with ctx.db.session() as s:
                row = file_svc.upload_stream(
                    s,
                    ctx.settings.files_dir,
                    caller.account_id,
                    name,
                    part.file,
                    purpose,
                    description=description,
                    workspace=caller.workspace,
                    max_bytes=MAX_FILE_BYTES,
                )
                return names.FILE_PREFIX + row.key

        try:
            uploaded.append({"file_id": await run_in_threadpool(store), "name": name})
        except InvalidParameter as e:
            failed.append({"name": name, "code": "InvalidParameter", "message": e.message})
    if not uploaded:
        # Nothing to hand back: the 2.x SDK reads uploaded_files[0], so an empty success would crash it.
        raise ApiError(400, "InvalidParameter", "; ".join(f["message"] for f in failed))
    return _data({"uploaded_files": uploaded, "failed_uploads": failed})


@router.get("/files")
def list_files(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    page_no, page_size = _paging(request)
    with ctx.db.session() as s:
        q = file_svc.files_query(caller.account_id, caller.workspace)
        total, rows = _page(s, q, (File.created_at.desc(), File.id.desc()), page_no, page_size)
        files = [render_file(f) for f in rows]
    return _data({"page_no": page_no, "page_size": page_size, "total": total, "files": files})


@router.get("/files/{file_id}")
def get_file(
    file_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    with ctx.db.session() as s:
        return _data(render_file(_file(s, caller, file_id)))


@router.delete("/files/{file_id}")
def delete_file(
    file_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    with ctx.db.session() as s:
        file_svc.delete_file(s, _file(s, caller, file_id))  # refused (FileInUse) while a live job uses it
    return _data({"deleted": True})


# ---- fine-tunes: rendering -------------------------------------------------------------------------


def _file_ids(s: Session | Connection, ids: list[int]) -> list[str]:
    if not ids:
        return []
    keys = file_keys(s, ids)
    return [names.FILE_PREFIX + keys[i] for i in ids if i in keys]


def render_job(s: Session, run: Run, caller: Caller, status: str | None = None) -> dict[str, Any]:
    return render_view(s, view_of(s, run), caller, status)


def render_view(
    s: Session | Connection, run: RunView, caller: Caller, status: str | None = None
) -> dict[str, Any]:
    ds = run.extra.get("dashscope") or {}
    status = status or names.status_of(run.state)
    jid = names.job_id(run.key, run.created_at)
    if "hyper_parameters" in ds:
        hyper = ds["hyper_parameters"]  # only what the caller declared, as the hosted service echoes
    else:
        hyper = names.hyperparameters_out(run.hyperparameters, int(run.dataset.get("split_ratio", 0)))
    out: dict[str, Any] = {
        "job_id": jid,
        "job_name": ds.get("job_name") or jid,
        "status": status,
        "model": run.job_base_model or run.base_model,
        "base_model": run.base_model,
        "training_file_ids": _file_ids(s, list(run.dataset.get("files", []))),
        "validation_file_ids": _file_ids(s, list(run.dataset.get("validation_files", []))),
        "hyper_parameters": hyper,
        "training_type": names.training_type_out(run.train_mode, run.parameter_scale),
        "create_time": names.ds_time(run.created_at),
        "workspace_id": run.job_workspace or DEFAULT_WORKSPACE,
        "user_identity": caller.account_name,
        "creator": caller.account_name,
        "modifier": caller.account_name,
        "group": "llm",
        "output_cnt": run.checkpoint_count,
    }
    if status in names.TERMINAL and run.finished_at is not None:
        out["end_time"] = names.ds_time(run.finished_at)
    if status == names.SUCCEEDED:
        # The produced model's name; the planned one if that model is gone.
        named = run.output_model_name
        out["finetuned_output"] = named if named is not None else run.output_name or ""
    if status in (names.SUCCEEDED, names.CANCELED):
        out["usage"] = int(run.metrics.get("trained_tokens") or 0)
    if status == names.FAILED:
        out["code"] = FAILED_CODE
        out["message"] = run.error or "the fine-tune job failed"
    return out


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "NotFound", f"Not found! No fine-tune job {job_id}")


def _run(s: Session, caller: Caller, job_id: str) -> Run:
    parsed = names.parse_job_id(job_id)
    if parsed is None:
        raise _not_found(job_id)
    key, stamp = parsed
    try:
        run = run_svc.get_run(s, caller.account_id, key=key)
    except NotFound:
        raise _not_found(job_id) from None
    if not names.stamp_matches(stamp, run.created_at):
        raise _not_found(job_id)
    if caller.workspace is not None and run_svc.job_of(s, run).workspace != caller.workspace:
        raise _not_found(job_id)
    return run


# ---- fine-tunes: create ----------------------------------------------------------------------------


def _output_name(body: CreateFineTune) -> str | None:
    """model_name (2.x) or its 1.x alias finetuned_output; else a name built with the optional suffix."""
    name = optional_str(body.model_name, "model_name") or optional_str(
        body.finetuned_output, "finetuned_output"
    )
    suffix = optional_str(body.finetuned_output_suffix, "finetuned_output_suffix")
    if name is None:
        if suffix is None:
            return None
        if not _SUFFIX.match(suffix):
            raise ApiError(
                400, "InvalidParameter", "finetuned_output_suffix: 1-32 letters, digits, '_', '.', '-'"
            )
        return "{base}-" + suffix + "-{key}"
    if not _MODEL_NAME.match(name):
        raise ApiError(
            400,
            "InvalidParameter",
            "model_name: 1-100 letters, digits, '_', '.', ':', '-', starting with a letter or digit",
        )
    # Whether it is free (not a base model's, not taken in the account) is the core's rule, at create.
    return name  # the pattern admits no braces, so the core's {key}/{base} expansion leaves it alone


def _datasets(s: Session, caller: Caller, ids: list[str], field: str) -> list[run_svc.DatasetChoice]:
    out = []
    for file_id in ids:
        key = strip_prefix(file_id, names.FILE_PREFIX)
        try:
            if key is None:
                raise NotFound("file", file_id)
            out.append(
                run_svc.DatasetChoice(
                    file_svc.get_file(s, caller.account_id, key=key, workspace=caller.workspace)
                )
            )
        except NotFound:
            where = " in this workspace" if caller.workspace is not None else ""
            raise ApiError(400, "InvalidParameter", f"{field}: file {file_id} not found{where}") from None
    return out


def _core_job_name(job_name: str | None, model: str) -> str:
    # The core's job names are 2-20 characters (a Qianfan rule); DashScope's own name is kept in extra.
    name = (job_name or f"ft-{model}")[:20]
    return name if len(name) >= 2 else f"ft-{name}"


def create_fine_tune(s: Session, caller: Caller, body: CreateFineTune) -> dict[str, Any]:
    model, train_ids, validation_ids = body.model, body.training_file_ids, body.validation_file_ids
    train_mode, method = body.training_type.train_mode, body.training_type.method
    hyper, job_name = body.hyper_parameters, body.job_name
    target = resolve_model(s, caller.account_id, model)
    params = catalog.capabilities(target.base.name).params_for(train_mode, method)
    seq_choices = next(p.check_value for p in params if p.key == "max_seq_len")
    canonical, split_ratio = names.hyperparameters_in(hyper, seq_choices, bool(validation_ids))
    datasets = _datasets(s, caller, train_ids, "training_file_ids")
    validation = _datasets(s, caller, validation_ids, "validation_file_ids")
    output_name = _output_name(body)
    job = job_svc.create_job(s, caller.account_id, _core_job_name(job_name, model))
    job.workspace = caller.workspace
    extra = {
        "dashscope": {
            "hyper_parameters": hyper,
            **({"job_name": job_name} if job_name else {}),
        }
    }
    run = run_svc.create_run(
        s,
        job,
        method,
        canonical,
        datasets,
        split_ratio=split_ratio,
        model=model,
        train_mode=train_mode,
        extra=extra,
        validation=validation,
        output_name=output_name,
    )
    # The job was just accepted and nothing has picked it up: the spec's PENDING (unless it failed at once).
    return render_job(s, run, caller, status=names.PENDING if run.state == RunState.QUEUED else None)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await json_object(request)
    if body is None:
        raise ApiError(400, "InvalidParameter", "the body must be a JSON object")
    return body


# ---- fine-tunes: routes ----------------------------------------------------------------------------


@router.post("/fine-tunes")
async def create(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    body = CreateFineTune.model_validate(await _json_body(request))

    def work() -> dict[str, Any]:
        with ctx.db.session() as s:
            return create_fine_tune(s, caller, body)

    return _output(await run_in_threadpool(work))


@router.get("/fine-tunes")
def list_fine_tunes(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    page_no, page_size = _paging(request)
    model = request.query_params.get("model") or None
    with ctx.db.session() as s:
        q = run_svc.runs_query(caller.account_id).join(Job, Job.id == Run.job_id)
        if caller.workspace is not None:
            q = q.where(Job.workspace == caller.workspace)
        if model is not None:
            q = q.where(Job.base_model == model)
        total, rows = _page(s, q, (Run.created_at.desc(), Run.id.desc()), page_no, page_size)
        jobs = [render_job(s, r, caller) for r in rows]
    return _output({"page_no": page_no, "page_size": page_size, "total": total, "jobs": jobs})


GET = "/fine-tunes/{job_id}"


@router.get(GET)
async def get_fine_tune(job_id: str, request: Request) -> Response:
    # Requests normally reach poll_fine_tune through the polling lane (api.polling); this route documents it.
    return await poll_fine_tune(request, job_id)


async def poll_fine_tune(request: Request, job_id: str) -> Response:
    """The fine-tune as clients poll it: auth inline, the run read as one Core row."""
    ctx = ctx_of(request)
    caller = await ds_caller(request, ctx)
    parsed = names.parse_job_id(job_id)
    if parsed is None:
        raise _not_found(job_id)
    key, stamp = parsed

    def render(conn: Connection, view: RunView | None) -> dict[str, Any]:
        if view is None or not names.stamp_matches(stamp, view.created_at):
            raise _not_found(job_id)
        if caller.workspace is not None and view.job_workspace != caller.workspace:
            raise _not_found(job_id)
        return render_view(conn, view, caller)

    return _ok("output", await polled_view(ctx, caller.account_id, key, render), FastJSONResponse)


POLLED = PolledCall(
    "GET",
    router.prefix + GET,
    template_pattern(router.prefix + GET),
    lambda request, job_id: ds_guarded(poll_fine_tune(request, job_id)),
)


@router.post("/fine-tunes/{job_id}/cancel")
def cancel_fine_tune(
    job_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        if run.state in TERMINAL:
            status = names.status_of(run.state)
            raise ApiError(
                400, "UnsupportedOperation", f"The fine-tune job cannot be canceled because it is {status}"
            )
        # A paused run (paused through another dialect) is stopped for good; a stopping one stays so.
        run_svc.request_stop(s, run)
    return _output({"status": "success"})


@router.delete("/fine-tunes/{job_id}")
def delete_fine_tune(
    job_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        if run.state == RunState.PAUSED:
            run_svc.request_stop(s, run)  # it reads CANCELED already; make that true before deleting
        if run.state not in TERMINAL:
            status = names.status_of(run.state)
            raise ApiError(
                400,
                "UnsupportedOperation",
                f"The fine-tune job cannot be deleted because it is {status}; cancel the job first",
            )
        run_svc.delete_run(s, run)
        job = run_svc.job_of(s, run)
        if s.scalar(run_svc.runs_query(caller.account_id, job.id).limit(1)) is None:
            job_svc.delete_job(s, job)
    return _output({"status": "success"})


@router.get("/fine-tunes/{job_id}/logs")
def fine_tune_logs(
    job_id: str, request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    """`offset` lines are skipped (0-based), then at most `line` lines come back; a short page is the end."""
    offset = _int_param(request, "offset", 0, 0)
    lines = _int_param(request, "line", 100, 1, LOG_LINES_MAX)
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        q = select(Event).where(Event.run_id == run.id)
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(Event.seq).offset(offset).limit(lines))
        logs = [names.log_line(e.time, e.type, e.payload) for e in rows]
    return _output({"total": total, "logs": logs})


def _frame(seq: int, payload: dict[str, Any]) -> str:
    return f"id:{seq}\nevent:result\ndata:{json.dumps(payload, ensure_ascii=False)}\n\n"


@router.get("/fine-tunes/{job_id}/stream")
async def stream_fine_tune(
    job_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> StreamingResponse:
    def lookup() -> int:
        with ctx.db.session() as s:
            return _run(s, caller, job_id).id

    run_id = await run_in_threadpool(lookup)  # an unknown id is a plain JSON 404, before any SSE

    follower = RunFollower(
        ctx.db.session,
        lambda s: s.get(Run, run_id),
        lambda s, run: None,
        # A paused run reads CANCELED here: for this dialect its record has ended.
        ended=lambda run: names.status_of(run.state) in names.TERMINAL,
    )

    async def frames() -> AsyncIterator[str]:
        current = names.PENDING
        async for tick in follower.ticks():
            if not isinstance(tick, Tick):  # nothing new for a while
                yield ": keep-alive\n\n"  # a comment line; both SDKs skip it
                continue
            for e in tick.events:
                if e.type == "status":
                    current = names.event_status(e.payload)
                line = names.log_line(e.time, e.type, e.payload)
                yield _frame(e.seq, {"job_id": job_id, "status": current, "log": line})
        # The SDK has no done marker: the end of the stream is the end of the job.

    rid = request_id()
    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"X-Request-Id": rid, "Cache-Control": "no-cache"},
    )


@router.api_route(
    "/fine-tunes/{job_id}/{rest:path}",
    methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
    include_in_schema=False,
)
def unknown_fine_tune_route(job_id: str, rest: str) -> JSONResponse:
    return ds_error(404, "NotFound", f"Not found! No such fine-tunes endpoint: {rest}")
