"""The web console under /console: server-rendered pages over the same core as the APIs.

Every page and action is scoped to the signed-in account through the core's account-filtered queries;
forms post back with a CSRF token; a run page follows its run live over server-sent events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, or_, select
from starlette.datastructures import UploadFile

from tunehouse.api.console import views
from tunehouse.api.console.auth import (
    ConsoleSession,
    check_csrf,
    load_session,
    login_redirect,
    safe_next,
    save_session,
    sign_in,
)
from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.limits import MAX_QUERY_INT
from tunehouse.api.openai import names as openai_names
from tunehouse.contract.datasets import detect_format, formats_for_train_mode, validate_dataset
from tunehouse.contract.spec import MAX_GPUS
from tunehouse.contract.tiny import ensure_tiny_model
from tunehouse.core import accounts, registry
from tunehouse.core import deployments as dep_svc
from tunehouse.core import files as file_svc
from tunehouse.core import jobs as job_svc
from tunehouse.core import runs as run_svc
from tunehouse.core.catalog import METHODS, TINY_MODEL, TRAIN_MODES
from tunehouse.core.errors import (
    Conflict,
    DomainError,
    FileInUse,
    InvalidParameter,
    NameTaken,
    NotFound,
    QuotaExceeded,
)
from tunehouse.core.events import events_page
from tunehouse.core.follow import RunFollower, Tick
from tunehouse.storage import is_url, iter_bytes, open_read
from tunehouse.store.models import Job, Model, Run

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

HERE = Path(__file__).parent
STATIC_DIR = (HERE / "static").resolve()
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(
    when=views.fmt_time,
    num=views.fmt_num,
    plain=views.plain,
    choice=views.choice,
    setting=views.setting,
    size=views.fmt_bytes,
    duration=views.fmt_duration,
)

JOBS_PAGE_SIZE = 20
MODE_LABELS = {"sft": "SFT (supervised)", "pretrain": "Continued pre-training", "dpo": "DPO (preferences)"}
METHOD_LABELS = {"full": "Full fine-tuning", "lora": "LoRA"}
# Fixed notices after a redirect: the query string names one, it never carries text of its own.
NOTICES = {
    "job-created": "Job created.",
    "stop": "Stop requested: the run saves a checkpoint and ends.",
    "pause": "Pause requested: the run saves a checkpoint and frees its slot.",
    "resume": "Run queued again; it continues from its last checkpoint.",
    "uploaded": "File uploaded and validated.",
    "file-deleted": "File deleted.",
    "revoked": "Key revoked.",
    "signed-out": "Signed out.",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


# ---- sessions and rendering ------------------------------------------------------------------------


def current_session(request: Request, ctx: AppContext = Depends(get_ctx)) -> ConsoleSession:
    return load_session(request, ctx)


def signed_in(request: Request, session: ConsoleSession = Depends(current_session)) -> ConsoleSession:
    if not session.signed_in:
        if request.method == "GET":
            raise login_redirect(request)
        raise HTTPException(status_code=303, headers={"Location": "/console/login"})
    return session


async def form_post(request: Request, session: ConsoleSession = Depends(signed_in)) -> ConsoleSession:
    await check_csrf(request, session)
    return session


def _secure(
    resp: Response, session: ConsoleSession | None = None, request: Request | None = None
) -> Response:
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers.setdefault("Cache-Control", "no-store")
    if session is not None and request is not None and session.fresh:
        save_session(request, resp, session)
    return resp


def page(request: Request, session: ConsoleSession, name: str, status: int = 200, **context: Any) -> Response:
    notice = NOTICES.get(request.query_params.get("done", ""))
    resp = templates.TemplateResponse(
        request,
        name,
        {"session": session, "notice": notice, "path": request.url.path, **context},
        status_code=status,
    )
    return _secure(resp, session, request)


def redirect(url: str, session: ConsoleSession | None = None, request: Request | None = None) -> Response:
    return _secure(RedirectResponse(url, status_code=303), session, request)


def error_page(status: int, message: str) -> Response:
    """The console's answer to a request no page handled (unknown path, bad query, over-limit body)."""
    titles = {400: "Bad request", 404: "Not found", 405: "Not allowed", 413: "Too large", 429: "Slow down"}
    html = templates.get_template("error.html").render(
        session=ConsoleSession(csrf=""),
        notice=None,
        path="",
        title=titles.get(status, "Error"),
        message=message,
    )
    return _secure(HTMLResponse(html, status_code=status))


def not_found(request: Request, session: ConsoleSession, what: str) -> Response:
    return page(request, session, "error.html", status=404, title="Not found", message=f"No such {what}.")


def _account(session: ConsoleSession) -> int:
    assert session.account_id is not None
    return session.account_id


# ---- entry points ----------------------------------------------------------------------------------


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/console", status_code=307)


@router.get("/console")
def console_home(session: ConsoleSession = Depends(current_session)) -> Response:
    return redirect("/console/jobs" if session.signed_in else "/console/login")


@router.get("/console/login")
def login_page(
    request: Request, next: str = "", session: ConsoleSession = Depends(current_session)
) -> Response:
    if session.signed_in:
        return redirect(safe_next(next))
    # The anonymous session carries the token the sign-in form posts back.
    session.fresh = True
    return page(request, session, "login.html", title="Sign in", next=safe_next(next), error="")


@router.post("/console/login")
async def login(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(current_session)
) -> Response:
    await check_csrf(request, session)
    form = await request.form()
    api_key = str(form.get("api_key") or "")
    target = safe_next(str(form.get("next") or ""))
    fresh = await run_in_threadpool(sign_in, api_key, ctx) if api_key else None
    if fresh is None:
        session.fresh = True
        return page(
            request,
            session,
            "login.html",
            status=401,
            title="Sign in",
            next=target,
            error="That API key is not valid (or has been revoked).",
        )
    return redirect(target, fresh, request)


@router.post("/console/logout")
def logout(request: Request, session: ConsoleSession = Depends(form_post)) -> Response:
    anonymous = ConsoleSession(csrf=session.csrf, fresh=True)
    return redirect("/console/login?done=signed-out", anonymous, request)


@router.get("/console/static/{name:path}")
def static(name: str) -> Response:
    path = (STATIC_DIR / name).resolve()
    if not path.is_file() or STATIC_DIR not in path.parents:
        raise HTTPException(status_code=404)
    media = {".js": "text/javascript", ".css": "text/css"}.get(path.suffix, "application/octet-stream")
    resp = FileResponse(path, media_type=media)
    resp.headers["Cache-Control"] = "public, max-age=3600"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp


# ---- jobs ------------------------------------------------------------------------------------------


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@router.get("/console/jobs")
def jobs_page(
    request: Request,
    q: str = "",
    page_no: int = Query(1, alias="page", ge=1, le=MAX_QUERY_INT),
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    return _jobs_page(request, ctx, session, q, page_no)


def _jobs_page(
    request: Request,
    ctx: AppContext,
    session: ConsoleSession,
    q: str = "",
    page_no: int = 1,
    status: int = 200,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    account = _account(session)
    term = q.strip()[:100]
    with ctx.db.session() as s:
        query = job_svc.jobs_query(account)
        if term:
            like = _like(term)
            query = query.where(
                or_(
                    Job.name.ilike(like, escape="\\"),
                    Job.description.ilike(like, escape="\\"),
                    Job.base_model.ilike(like, escape="\\"),
                    Job.key == term.lower(),
                )
            )
        total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
        pages = max(1, math.ceil(total / JOBS_PAGE_SIZE))
        page_no = min(max(1, page_no), pages)
        jobs = list(
            s.scalars(
                query.order_by(Job.id.desc()).offset((page_no - 1) * JOBS_PAGE_SIZE).limit(JOBS_PAGE_SIZE)
            )
        )
        runs = list(
            s.scalars(
                run_svc.runs_query(account).where(Run.job_id.in_([j.id for j in jobs])).order_by(Run.id)
            )
        )
    latest: dict[int, Run] = {}
    counts: dict[int, int] = {}
    for r in runs:
        latest[r.job_id] = r
        counts[r.job_id] = counts.get(r.job_id, 0) + 1
    rows = [{"job": j, "runs": counts.get(j.id, 0), "latest": latest.get(j.id)} for j in jobs]
    return page(
        request,
        session,
        "jobs.html",
        status=status,
        title="Jobs",
        rows=rows,
        q=term,
        page_no=page_no,
        pages=pages,
        total=total,
        form=form or {"name": "", "description": ""},
        errors=errors or {},
    )


@router.post("/console/jobs")
async def create_job(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(form_post)
) -> Response:
    form = await request.form()
    name = str(form.get("name") or "").strip()
    description = str(form.get("description") or "").strip()

    def work() -> str:
        with ctx.db.session() as s:
            return job_svc.create_job(s, _account(session), name, description).key

    try:
        key = await run_in_threadpool(work)
    except InvalidParameter as e:
        form_values = {"name": name, "description": description}
        errors = {e.field: e.message}
        return await run_in_threadpool(
            _jobs_page, request, ctx, session, status=400, form=form_values, errors=errors
        )
    return redirect(f"/console/jobs/{key}?done=job-created")


@router.get("/console/jobs/{job_key}")
def job_page(
    request: Request,
    job_key: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    account = _account(session)
    with ctx.db.session() as s:
        try:
            job = job_svc.get_job(s, account, key=job_key)
        except NotFound:
            return not_found(request, session, "job")
        runs = list(s.scalars(run_svc.runs_query(account, job.id).order_by(Run.id.desc())))
    return page(request, session, "job.html", title=f"Job {job.name}", job=job, runs=runs)


# ---- new run ---------------------------------------------------------------------------------------


def _run_form_context(s: Any, account: int, job: Job, values: dict[str, Any]) -> dict[str, Any]:
    models = registry.visible_models(s, account)
    names = {m.name: (m.base_model or m.name) if m.kind != "base" else m.name for m in models}
    files = [
        f for f in file_svc.list_files(s, account) if f.purpose in file_svc.PURPOSES and f.deleted_at is None
    ]
    model = values.get("model") or job.base_model or (models[0].name if models else "")
    mode = values.get("train_mode") or job.train_mode or "sft"
    method = values.get("method") or job.parameter_scale or "lora"
    spec = views.capabilities_spec(names)
    current = spec.get(model, {}).get(mode, {}).get(method, [])
    return {
        "job": job,
        "base_models": [m for m in models if m.kind == "base"],
        "tuned_models": [m for m in models if m.kind != "base"],
        "files": list(reversed(files)),
        "spec": spec,
        "params": current,
        "modes": TRAIN_MODES,
        "methods": METHODS,
        "mode_labels": MODE_LABELS,
        "method_labels": METHOD_LABELS,
        "values": {
            "model": model,
            "train_mode": mode,
            "method": method,
            "split_ratio": values.get("split_ratio", "0"),
            "gpus": values.get("gpus", "1"),
            "output_name": values.get("output_name", ""),
            "datasets": set(values.get("datasets", [])),
            "validation": set(values.get("validation", [])),
            "hp": values.get("hp", {}),
        },
        "hp_step": views.hp_step,
        "max_gpus": MAX_GPUS,
    }


@router.get("/console/jobs/{job_key}/runs/new")
def new_run_page(
    request: Request,
    job_key: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    with ctx.db.session() as s:
        try:
            job = job_svc.get_job(s, _account(session), key=job_key)
        except NotFound:
            return not_found(request, session, "job")
        context = _run_form_context(s, _account(session), job, {})
    return page(request, session, "run_new.html", title="New run", errors={}, upload_reports=[], **context)


def _validate_upload(filename: str, part: UploadFile) -> dict[str, Any]:
    """The validator's verdict on an upload, line by line, read from its spooled copy; nothing is stored."""
    part.file.seek(0)
    with tempfile.NamedTemporaryFile(suffix=".check") as tmp:
        shutil.copyfileobj(part.file, tmp, file_svc.CHUNK)
        tmp.flush()
        report = validate_dataset(Path(tmp.name), max_errors=50)
    modes = [mode for mode in TRAIN_MODES if report.format in formats_for_train_mode(mode)]
    return {
        "filename": filename,
        "ok": report.ok,
        "format": report.format,
        "rows": report.rows,
        "errors": [{"line": e.line, "field": e.field, "message": e.message} for e in report.errors],
        "more_errors": report.more_errors,
        "train_modes": modes,
    }


def _uploads(form: Any, field: str) -> list[tuple[str, UploadFile]]:
    return [(i.filename, i) for i in form.getlist(field) if isinstance(i, UploadFile) and i.filename]


@router.post("/console/files/validate")
async def validate_upload(request: Request, session: ConsoleSession = Depends(form_post)) -> Response:
    form = await request.form()
    files = _uploads(form, "file")
    if not files:
        return _secure(JSONResponse({"error": "no file given"}, status_code=400))
    reports = [await run_in_threadpool(_validate_upload, name, part) for name, part in files]
    return _secure(JSONResponse({"files": reports}))


PREVIEW_FORMATS = {"chat", "prompt_response"}  # conversations; text and preference rows are not previewed
PREVIEW_TIMEOUT_S = 60.0
PREVIEW_LINE_MAX = 1 << 20
PREVIEW_SLOTS = 2  # each preview is a process loading transformers; clicking through files forks no crowd


class _PreviewError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _line_format(line: bytes) -> str | None:
    """The dataset format one JSONL line looks like (None if it is not JSON)."""
    try:
        return detect_format(json.loads(line))
    except ValueError:
        return None


def _first_line(path: str) -> bytes:
    """A stored file's first non-blank line: the preview never reads (or validates) the whole file."""
    with open_read(path) as fh:
        for line in fh:
            if line.strip():
                return line[:PREVIEW_LINE_MAX]
    return b""


def _preview_source(ctx: AppContext, account: int, model_name: str, file_key: str) -> dict[str, Any]:
    """The model directory holding the tokenizer, and the base model's fallback for a missing template."""
    with ctx.db.session() as s:
        try:
            resolved = registry.resolve_model(s, account, model_name)
        except InvalidParameter as e:
            raise _PreviewError(400, e.message) from None
        model_dir = resolved.init_from["path"] if resolved.init_from else resolved.base.path
        source = {"model_dir": model_dir, "fallback": resolved.base.chat_template_fallback}
        if resolved.base.name == TINY_MODEL and not resolved.init_from:
            source["tiny"] = True
        if file_key:
            try:
                f = file_svc.get_file(s, account, key=file_key)
            except NotFound:
                raise _PreviewError(404, f"No such file: {file_key}.") from None
            source.update(format=f.format, path=f.path)
    return source


async def _run_preview(model_dir: str, fallback: str, line: bytes) -> tuple[int, dict[str, Any]]:
    """``python -m tunehouse.trainer.preview`` in a child process: the server never loads transformers."""
    with tempfile.TemporaryDirectory(prefix="tunehouse-preview-") as tmp:
        conversation = Path(tmp) / "conversation.jsonl"
        await run_in_threadpool(conversation.write_bytes, line.rstrip(b"\r\n") + b"\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tunehouse.trainer.preview", model_dir,
            "--conversation", str(conversation), "--fallback", fallback,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), PREVIEW_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 504, {"error": f"The preview took longer than {PREVIEW_TIMEOUT_S:.0f} s."}
    try:
        result = json.loads(out.decode())
    except ValueError:
        log.warning("preview of %s failed (exit %s): %s", model_dir, proc.returncode, err.decode()[-2000:])
        return 500, {"error": "The preview failed; the server log has the details."}
    if "error" in result:  # the temporary file's name means nothing to the user
        result["error"] = str(result["error"]).removeprefix(f"{conversation.name}: ")
    return (200 if proc.returncode == 0 else 400), result


@router.post("/console/preview")
async def preview_conversation(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(form_post)
) -> Response:
    """What a run would train on from a dataset's first conversation, for the new-run page: either a
    stored file of the account (``file``: its key) or the first line of a file about to be uploaded."""
    form = await request.form()
    model = form.get("model")
    file_key = form.get("file")
    line = form.get("line")
    if not isinstance(model, str) or not model:
        return _secure(JSONResponse({"error": "no model given"}, status_code=400))
    if not (isinstance(file_key, str) and file_key) and not (isinstance(line, str) and line.strip()):
        return _secure(JSONResponse({"error": "give a file key or a line"}, status_code=400))
    try:
        source = await run_in_threadpool(
            _preview_source, ctx, _account(session), model, file_key if isinstance(file_key, str) else ""
        )
    except _PreviewError as e:
        return _secure(JSONResponse({"error": e.message}, status_code=e.status))
    if "path" in source:
        data = await run_in_threadpool(_first_line, source["path"])
        fmt = source["format"]
    else:
        data = str(line).encode()[:PREVIEW_LINE_MAX]
        fmt = _line_format(data)
    if fmt not in PREVIEW_FORMATS:
        return _secure(JSONResponse({"skipped": f"{fmt or 'unknown'} rows are not conversations"}))
    if source.get("tiny"):
        # Built on first use, as the scheduler does.
        await run_in_threadpool(ensure_tiny_model, ctx.settings.home)
    if not await run_in_threadpool(Path(source["model_dir"]).is_dir):
        missing = f"The model's directory is missing: {source['model_dir']}"
        return _secure(JSONResponse({"error": missing}, status_code=400))
    slots = getattr(request.app.state, "preview_slots", None)
    if slots is None:  # one per app, made on the app's own event loop
        slots = request.app.state.preview_slots = asyncio.Semaphore(PREVIEW_SLOTS)
    async with slots:
        status, result = await _run_preview(source["model_dir"], source["fallback"], data)
    return _secure(JSONResponse(result, status_code=status))


def _store_uploads(
    ctx: AppContext, account: int, uploads: list[tuple[str, UploadFile]]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Valid files are stored (each in its own transaction: a later failure keeps them for reuse)."""
    keys: list[str] = []
    reports: list[dict[str, Any]] = []
    for name, part in uploads:
        report = _validate_upload(name, part)
        if not report["ok"]:
            reports.append(report)
            continue
        part.file.seek(0)
        with ctx.db.session() as s:
            row = file_svc.upload_stream(s, ctx.settings.files_dir, account, name, part.file, "fine-tune")
            keys.append(row.key)
    return keys, reports


@router.post("/console/jobs/{job_key}/runs")
async def create_run(
    request: Request,
    job_key: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(form_post),
) -> Response:
    account = _account(session)
    form = await request.form()
    text = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    hp, hp_errors = views.parse_hyperparameters(text)
    values: dict[str, Any] = {
        "model": text.get("model", ""),
        "train_mode": text.get("train_mode", ""),
        "method": text.get("method", ""),
        "split_ratio": text.get("split_ratio", "0"),
        "gpus": text.get("gpus", "1"),
        "output_name": text.get("output_name", "").strip(),
        "datasets": [v for v in form.getlist("datasets") if isinstance(v, str)],
        "validation": [v for v in form.getlist("validation") if isinstance(v, str)],
        "hp": {k[3:]: v for k, v in text.items() if k.startswith("hp.")},
    }
    uploads = _uploads(form, "upload")
    validation_uploads = _uploads(form, "validation_upload")

    def work() -> Response:
        errors: dict[str, str] = {k: v for k, v in hp_errors.items()}
        new_train, bad_train = _store_uploads(ctx, account, uploads)
        new_val, bad_val = _store_uploads(ctx, account, validation_uploads)
        values["datasets"] = values["datasets"] + new_train
        values["validation"] = values["validation"] + new_val
        reports = bad_train + bad_val
        if reports:
            errors["upload"] = "Some uploaded files have errors; fix them and upload again."
        if not errors:
            # A failed creation leaves its transaction rolled back; the form is re-rendered from a fresh one.
            try:
                with ctx.db.session() as s:
                    job = job_svc.get_job(s, account, key=job_key)
                    return redirect(f"/console/runs/{_create_run(s, account, job, values, hp)}")
            except NotFound as e:
                if e.resource == "job":
                    return not_found(request, session, "job")
                errors["datasets"] = e.message
            except NameTaken as e:
                errors["output_name"] = e.message
            except (InvalidParameter, Conflict, QuotaExceeded) as e:
                errors[getattr(e, "field", "form")] = e.message
            except ValueError as e:  # e.g. a train mode the data layer does not support yet
                errors["train_mode"] = str(e)
        with ctx.db.session() as s:
            try:
                job = job_svc.get_job(s, account, key=job_key)
            except NotFound:
                return not_found(request, session, "job")
            context = _run_form_context(s, account, job, values)
        return page(
            request,
            session,
            "run_new.html",
            status=400,
            title="New run",
            errors=errors,
            upload_reports=reports,
            **context,
        )

    return await run_in_threadpool(work)


def _create_run(s: Any, account: int, job: Job, values: dict[str, Any], hp: dict[str, Any]) -> str:
    try:
        split = int(values["split_ratio"] or 0)
    except ValueError:
        raise InvalidParameter("split_ratio", "must be a whole number of percent") from None
    try:
        gpus = int(values["gpus"] or 1)
    except ValueError:
        raise InvalidParameter("gpus", "must be a whole number") from None
    datasets = [run_svc.DatasetChoice(file_svc.get_file(s, account, key=k)) for k in values["datasets"]]
    validation = [run_svc.DatasetChoice(file_svc.get_file(s, account, key=k)) for k in values["validation"]]
    run = run_svc.create_run(
        s,
        job,
        method=values["method"],
        hyperparameters=hp,
        datasets=datasets,
        split_ratio=split,
        model=values["model"] or None,
        train_mode=values["train_mode"] or None,
        validation=validation or None,
        output_name=values["output_name"] or None,
        gpus=gpus,
        extra={"created_by": "console"},
    )
    return run.key


# ---- run page and its live stream ------------------------------------------------------------------


def _all_events(s: Any, run: Run) -> list[Any]:
    out: list[Any] = []
    after = 0
    while True:
        batch = events_page(s, run, after_seq=after, limit=1000)
        out.extend(batch)
        if len(batch) < 1000:
            return out
        after = batch[-1].seq


def _output(s: Any, account: int, run: Run) -> Model | None:
    if run.output_model_id is None:
        return None
    try:
        return registry.get_model(s, account, run.output_model_id)
    except NotFound:
        return None


@router.get("/console/runs/{run_key}")
def run_page(
    request: Request,
    run_key: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    account = _account(session)
    with ctx.db.session() as s:
        try:
            run = run_svc.get_run(s, account, key=run_key)
        except NotFound:
            return not_found(request, session, "run")
        job = run_svc.job_of(s, run)
        events = _all_events(s, run)
        checkpoints = [views.checkpoint_row(c) for c in run_svc.checkpoints(s, run)]
        output = _output(s, account, run)
        snapshot = views.run_snapshot(run, output)
        files = {f.id: f for f in file_svc.list_files(s, account)}
        # What the run offers to deploy: its output model, and each checkpoint under its OpenAI model id.
        deploy_choices = [output.name] if output is not None else []
        if run.output_name:
            deploy_choices += [
                openai_names.checkpoint_model(str(run.output_name), c["step"]) for c in checkpoints
            ]
        deployed = {d.endpoint: d.status for d in dep_svc.list_deployments(s, account)}
    points = [p for p in (views.chart_point(e) for e in events) if p is not None]
    log = [views.log_item(e) for e in events if e.type not in views.CHART_TYPES]
    data = {
        "key": run.key,
        "last_seq": events[-1].seq if events else 0,
        "points": points,
        "snapshot": snapshot,
        "stream": f"/console/runs/{run.key}/stream",
    }
    dataset_files = [files.get(i) for i in (run.dataset or {}).get("files", [])]
    validation_files = [files.get(i) for i in (run.dataset or {}).get("validation_files", [])]
    result_files = (run.extra or {}).get("result_files") or []
    return page(
        request,
        session,
        "run.html",
        title=f"Run {run.key}",
        run=run,
        job=job,
        snap=snapshot,
        checkpoints=checkpoints,
        log=log[-300:],
        log_hidden=max(0, len(log) - 300),
        data=data,
        dataset_files=[f for f in dataset_files if f is not None],
        validation_files=[f for f in validation_files if f is not None],
        result_files=result_files if isinstance(result_files, list) else [],
        mode_labels=MODE_LABELS,
        method_labels=METHOD_LABELS,
        deploy_choices=[{"name": n, "status": deployed.get(n)} for n in deploy_choices],
    )


def _sse(event: str, data: Any, ident: int | None = None) -> str:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@router.get("/console/runs/{run_key}/stream")
async def run_stream(
    request: Request,
    run_key: str,
    after: int = Query(0, ge=0, le=MAX_QUERY_INT),
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    """New events of the run as they are stored, and its headline numbers; ends once the run has ended."""
    account = _account(session)
    last_id = request.headers.get("last-event-id", "")
    if last_id.isdigit() and int(last_id) <= MAX_QUERY_INT:
        # A reconnecting EventSource resumes after the last event it received.
        after = max(after, int(last_id))

    def view(s: Any, run: Run) -> dict[str, Any]:
        snapshot = views.run_snapshot(run, _output(s, account, run))
        snapshot["checkpoints"] = [views.checkpoint_row(c) for c in run_svc.checkpoints(s, run)]
        return snapshot

    follower = RunFollower(ctx.db.session, lambda s: run_svc.get_run(s, account, key=run_key), view, after)
    first = await run_in_threadpool(follower.poll)
    if first is None:
        raise HTTPException(status_code=404, detail="no such run")

    async def gen() -> Any:
        shown: dict[str, Any] | None = None
        yield "retry: 2000\n\n"
        async for tick in follower.ticks(first, disconnected=request.is_disconnected):
            if not isinstance(tick, Tick):  # nothing new for a while
                yield ": keepalive\n\n"
                continue
            for e in tick.events:
                yield _sse("event", views.client_event(e), e.seq)
            if tick.view != shown:
                shown = tick.view
                yield _sse("run", tick.view)
            if tick.ended:
                yield _sse("end", {"state": tick.view["state"]})

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(gen(), media_type="text/event-stream", headers=headers)


@router.post("/console/runs/{run_key}/{action}")
def run_action(
    request: Request,
    run_key: str,
    action: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(form_post),
) -> Response:
    if action not in ("stop", "pause", "resume"):
        return not_found(request, session, "action")
    try:
        with ctx.db.session() as s:
            run = run_svc.get_run(s, _account(session), key=run_key)
            if action == "stop":
                run_svc.request_stop(s, run)
            elif action == "pause":
                run_svc.request_pause(s, run)
            else:
                run_svc.resume(s, run)
    except NotFound:
        return not_found(request, session, "run")
    except (Conflict, QuotaExceeded) as e:
        return page(request, session, "error.html", status=409, title="Not possible now", message=e.message)
    return redirect(f"/console/runs/{run_key}?done={action}")


# ---- models, files, keys ---------------------------------------------------------------------------


@router.get("/console/models")
def models_page(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(signed_in)
) -> Response:
    account = _account(session)
    with ctx.db.session() as s:
        models = registry.visible_models(s, account)
        runs = {r.id: r for r in s.scalars(run_svc.runs_query(account))}
    own = {m.name: m for m in models if m.account_id is not None}
    rows = [{"model": m, "lineage": views.lineage(m, runs, own)} for m in models]
    return page(
        request,
        session,
        "models.html",
        title="Models",
        base=[r for r in rows if r["model"].kind == "base"],
        tuned=[r for r in rows if r["model"].kind != "base"],
        runs=runs,
    )


def _files_page(
    request: Request,
    ctx: AppContext,
    session: ConsoleSession,
    status: int = 200,
    reports: list[dict[str, Any]] | None = None,
    error: str = "",
) -> Response:
    with ctx.db.session() as s:
        files = list(reversed(file_svc.list_files(s, _account(session))))
    return page(
        request,
        session,
        "files.html",
        status=status,
        title="Files",
        files=files,
        reports=reports or [],
        error=error,
    )


@router.get("/console/files")
def files_page(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(signed_in)
) -> Response:
    return _files_page(request, ctx, session)


@router.post("/console/files")
async def upload_files(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(form_post)
) -> Response:
    form = await request.form()
    uploads = _uploads(form, "file")
    if not uploads:
        return _files_page(request, ctx, session, status=400, error="Choose a file to upload.")
    try:
        _, bad = await run_in_threadpool(_store_uploads, ctx, _account(session), uploads)
    except DomainError as e:
        return _files_page(request, ctx, session, status=400, error=e.message)
    if bad:
        return _files_page(request, ctx, session, status=400, reports=bad)
    return redirect("/console/files?done=uploaded")


@router.get("/console/files/{file_key}/content")
def file_content(
    request: Request,
    file_key: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    with ctx.db.session() as s:
        try:
            f = file_svc.get_file(s, _account(session), key=file_key)
        except NotFound:
            return not_found(request, session, "file")
    media = "text/csv" if f.format == "csv" else "application/jsonl"
    if is_url(f.path):  # in the object store: streamed through in chunks
        disposition = {"content-disposition": f"attachment; filename*=utf-8''{quote(f.filename)}"}
        return _secure(StreamingResponse(iter_bytes(f.path), media_type=media, headers=disposition))
    return _secure(FileResponse(f.path, media_type=media, filename=f.filename))


@router.post("/console/files/{file_key}/delete")
def delete_file(
    request: Request,
    file_key: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(form_post),
) -> Response:
    try:
        with ctx.db.session() as s:
            file_svc.delete_file(s, file_svc.get_file(s, _account(session), key=file_key))
    except NotFound:
        return not_found(request, session, "file")
    except FileInUse as e:
        runs = ", ".join(r.key for r in e.runs)
        message = f"This file is used by runs that have not ended ({runs}); stop them or let them finish."
        return _files_page(request, ctx, session, status=409, error=message)
    return redirect("/console/files?done=file-deleted")


def _keys_page(
    request: Request, ctx: AppContext, session: ConsoleSession, issued: Any = None, error: str = ""
) -> Response:
    with ctx.db.session() as s:
        creds = list(reversed(accounts.list_credentials(s, _account(session))))
    return page(request, session, "keys.html", title="API keys", creds=creds, issued=issued, error=error)


@router.get("/console/keys")
def keys_page(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(signed_in)
) -> Response:
    return _keys_page(request, ctx, session)


@router.post("/console/keys")
async def create_key(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(form_post)
) -> Response:
    form = await request.form()
    label = str(form.get("label") or "").strip()
    if len(label) > 32:
        return _keys_page(request, ctx, session, error="Labels are at most 32 characters.")

    def work() -> accounts.IssuedKeys:
        with ctx.db.session() as s:
            acc = accounts.get_account(s, _account(session))
            return accounts.issue_keys(s, ctx.box, acc, label=label)

    issued = await run_in_threadpool(work)
    # Shown once, in this response only: the secrets are never stored in a readable form or a URL.
    return _keys_page(request, ctx, session, issued=issued)


@router.post("/console/keys/{credential_id}/revoke")
def revoke_key(
    request: Request,
    credential_id: int,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(form_post),
) -> Response:
    with ctx.db.session() as s:
        try:
            accounts.revoke_credential(s, accounts.get_credential(s, _account(session), credential_id))
        except NotFound:
            return not_found(request, session, "key")
    if credential_id == session.credential_id:
        return redirect("/console/login?done=signed-out")
    return redirect("/console/keys?done=revoked")
