"""OpenAI fine-tuning jobs under /v1/fine_tuning, translated to and from the core.

An OpenAI fine-tuning job is a core run; creating one creates its job and first run together. Every run of
the account is visible here (as `ftjob-<key>`), whichever dialect created it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, ctx_of, get_ctx
from tunehouse.api.fast_json import FastJSONResponse
from tunehouse.api.json_body import json_object
from tunehouse.api.limits import MAX_QUERY_INT
from tunehouse.api.openai import names
from tunehouse.api.openai.auth import Caller
from tunehouse.api.openai.auth import openai_caller as caller_dep
from tunehouse.api.openai.common import bad_cursor, limit_param, listing
from tunehouse.api.openai.errors import OpenAIError, OpenAIRoute, openai_guarded
from tunehouse.api.openai.files import lookup as lookup_file
from tunehouse.api.openai.schemas import CreateFineTuningJob
from tunehouse.api.polling import PolledCall, polled_view, template_pattern
from tunehouse.core import catalog
from tunehouse.core import jobs as job_svc
from tunehouse.core import runs as run_svc
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound
from tunehouse.core.events import record_event
from tunehouse.core.file_keys import file_keys
from tunehouse.core.ids import strip_prefix
from tunehouse.core.registry import ResolvedModel, resolve_model, run_by_output_name
from tunehouse.core.run_views import RunView, view_of
from tunehouse.core.states import TERMINAL, RunState
from tunehouse.store.models import Checkpoint, Event, File, Model, Run

router = APIRouter(prefix="/v1/fine_tuning", route_class=OpenAIRoute)

CORE_METHOD = "lora"  # OpenAI does not say how it tunes; adapters are the cheap, resumable choice
JOBS_DEFAULT, EVENTS_DEFAULT, CHECKPOINTS_DEFAULT, PAGE_MAX = 20, 20, 10, 100


# ---- rendering -------------------------------------------------------------------------------------


def _openai_extra(run: Run | RunView) -> dict[str, Any]:
    return dict(run.extra.get("openai") or {})


def _default_lr(run: Run | RunView) -> float:
    stored = _openai_extra(run).get("lr_base")
    if stored:
        return float(stored)
    return float(catalog.default_of(run.base_model, run.train_mode, run.parameter_scale, "learning_rate"))


def _file_keys(s: Session | Connection, ids: list[int]) -> list[str]:
    if not ids:
        return []
    # Deleted files stay named: the job trained on them.
    keys = file_keys(s, ids)
    return [names.file_id(keys[i]) for i in ids if i in keys]


_STATUS_EVENTS = (
    select(Event.payload, Event.time)
    .where(Event.run_id == bindparam("run"), Event.type == "status")
    .order_by(Event.seq.desc())
)
_ERROR_EVENTS = (
    select(Event.payload)
    .where(Event.run_id == bindparam("run"), Event.type == "error")
    .order_by(Event.seq.desc())
)


def _finished_at(s: Session | Connection, run: RunView) -> int | None:
    if run.finished_at is not None:
        return int(run.finished_at.timestamp())
    if run.state == RunState.STOPPING:
        # Shown as cancelled already: it ended for the caller when the cancel was accepted.
        for payload, at in s.execute(_STATUS_EVENTS, {"run": run.id}):
            if payload.get("state") == RunState.STOPPING:
                return int(at.timestamp())
    return None


def _trained_tokens(run: RunView) -> int | None:
    # The trainer reports the total with the finished model; null until then, as OpenAI has it.
    value = run.metrics.get("trained_tokens")
    return int(value) if value is not None else None


def _error(s: Session | Connection, run: RunView) -> dict[str, Any] | None:
    if run.state != RunState.FAILED:
        return None
    stored = _openai_extra(run).get("error")
    message = run.error or "The fine-tuning job failed."
    if stored:
        return {"code": stored["code"], "message": message, "param": stored.get("param")}
    kinds = s.execute(_ERROR_EVENTS, {"run": run.id}).scalars()
    kind = next((p.get("kind") for p in kinds), None)
    if kind == "data":
        return {"code": "invalid_training_file", "message": message, "param": "training_file"}
    return {"code": "training_error", "message": message, "param": None}


def render_job(s: Session, run: Run, caller: Caller) -> dict[str, Any]:
    return render_view(s, view_of(s, run, count=False), caller)  # it shows no checkpoint count


def render_view(s: Session | Connection, run: RunView, caller: Caller) -> dict[str, Any]:
    extra = _openai_extra(run)
    status = names.status_of(run.state)
    method_type = names.METHOD_OF_MODE.get(run.train_mode)
    hyper = names.hyperparameters_out(run.hyperparameters, method_type or "supervised", _default_lr(run))
    training = _file_keys(s, list(run.dataset.get("files", [])))
    validation = _file_keys(s, list(run.dataset.get("validation_files", [])))
    fine_tuned = None
    if run.state == RunState.SUCCEEDED and run.output_model_id is not None:
        fine_tuned = run.output_model_name
    finish = run_svc.estimated_finish(run)
    estimated = int(finish.timestamp()) if finish is not None else None
    method: dict[str, Any] | None = None
    if method_type is not None:
        method = {"type": method_type, method_type: {"hyperparameters": hyper}}
    return {
        "object": "fine_tuning.job",
        "id": names.job_id(run.key),
        "model": extra.get("model") or run.job_base_model or run.base_model,
        "created_at": int(run.created_at.timestamp()),
        "finished_at": _finished_at(s, run),
        "fine_tuned_model": fine_tuned,
        "organization_id": caller.organization_id,
        "result_files": [names.file_id(k) for k in run.extra.get("result_files", [])],
        "status": status,
        "validation_file": validation[0] if validation else None,
        "training_file": training[0] if training else "",
        # The top-level form has no beta: it is the supervised shape.
        "hyperparameters": {k: v for k, v in hyper.items() if k != "beta"},
        "trained_tokens": _trained_tokens(run),
        "error": _error(s, run),
        "seed": int(run.hyperparameters.get("seed", 0)),
        "estimated_finish": estimated,
        "integrations": extra.get("integrations") or [],
        "metadata": extra.get("metadata"),
        "user_provided_suffix": extra.get("suffix"),
        "method": method,
    }


def _not_found(job_id: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"Could not find fine-tuning job {job_id}.",
        param="fine_tuning_job_id",
        code="fine_tune_not_found",
    )


def _run(s: Session, caller: Caller, job_id: str) -> Run:
    key = strip_prefix(job_id, names.JOB_PREFIX)
    if key is None:
        raise _not_found(job_id)
    try:
        return run_svc.get_run(s, caller.account_id, key=key)
    except NotFound:
        raise _not_found(job_id) from None


# ---- create ----------------------------------------------------------------------------------------


def _dataset(s: Session, caller: Caller, file_id: str, param: str) -> File:
    row = lookup_file(s, caller, file_id, param=param, status=400)
    if row.purpose != "fine-tune":
        raise OpenAIError(
            400,
            f"File {file_id} has purpose {row.purpose!r}; fine-tuning needs a 'fine-tune' file.",
            param=param,
            code="invalid_file_purpose",
        )
    return row


def _starting_point(s: Session, caller: Caller, model: str) -> tuple[ResolvedModel, tuple[Run, int] | None]:
    """A base model, one of the caller's fine-tuned models, or one of their checkpoints (`…:ckpt-step-N`)."""
    try:
        return resolve_model(s, caller.account_id, model), None
    except InvalidParameter as e:
        unknown = OpenAIError(
            400, f"Model {model!r} is not available: {e.message}", "model", "model_not_available"
        )
        parsed = names.parse_checkpoint_model(model)
        if parsed is None:
            raise unknown from None
    source = run_by_output_name(s, caller.account_id, parsed[0])
    if source is None or not any(c.step == parsed[1] for c in run_svc.checkpoints(s, source)):
        raise unknown
    return resolve_model(s, caller.account_id, source.base_model), (source, parsed[1])


_HYPER_FIELD_OUT = {v: k for k, v in names.DPO_HYPER_IN.items()}


def _core_error(e: InvalidParameter, where: str, default_lr: float) -> OpenAIError:
    """A core InvalidParameter (canonical field) as the OpenAI parameter the caller sent."""
    if e.field in _HYPER_FIELD_OUT:
        name = _HYPER_FIELD_OUT[e.field]
        message = f"{name} {e.message}"
        if name == "learning_rate_multiplier":
            message = (
                f"learning_rate_multiplier × {default_lr:g} (the model's default learning rate) {e.message}"
            )
        return OpenAIError(400, message, param=f"{where}.{name}", code="invalid_hyperparameters")
    if e.field == "seed":
        return OpenAIError(400, f"seed {e.message}", param="seed", code="invalid_value")
    if e.field in ("datasets", "increment_from", "increment_step"):
        return OpenAIError(
            400, f"Invalid training file: {e.message}", param="training_file", code="invalid_training_file"
        )
    if e.field == "validation":
        return OpenAIError(
            400,
            f"Invalid validation file: {e.message}",
            param="validation_file",
            code="invalid_validation_file",
        )
    if e.field == "model":
        return OpenAIError(400, e.message, param="model", code="model_not_available")
    if e.field in ("train_mode", "method"):
        return OpenAIError(400, e.message, param="method", code="unsupported_method")
    return OpenAIError(400, f"{e.field}: {e.message}", param=e.field)


def create_fine_tuning_job(s: Session, caller: Caller, body: CreateFineTuningJob) -> dict[str, Any]:
    model, training_id, validation_id = body.model, body.training_file, body.validation_file
    kind, hyper, where = body.method.type, body.method.hyperparameters, body.method.where
    suffix, seed, metadata, integrations = body.suffix, body.seed, body.metadata, body.integrations
    target, increment = _starting_point(s, caller, model)
    base = target.base.name
    train_mode = names.MODE_OF_METHOD[kind]
    try:
        params = catalog.capabilities(base).params_for(train_mode, CORE_METHOD)
    except InvalidParameter as e:
        raise OpenAIError(400, e.message, param="method", code="unsupported_method") from None
    default_lr = float(next(p.default for p in params if p.key == "learning_rate"))
    try:
        canonical = names.hyperparameters_in(hyper, kind, default_lr)
    except names.HyperparameterError as e:
        raise OpenAIError(400, e.message, param=f"{where}.{e.name}", code="invalid_hyperparameters") from None
    if seed is not None:
        canonical["seed"] = seed
    training = _dataset(s, caller, training_id, "training_file")
    validation = [_dataset(s, caller, validation_id, "validation_file")] if validation_id else []
    # A checkpoint at the end of every epoch, as OpenAI keeps them (not asked of the caller).
    batch = int(canonical.get("batch_size") or next(p.default for p in params if p.key == "batch_size"))
    canonical["save_steps"] = run_svc.epoch_save_steps(training.rows, batch)
    output_name = names.output_name_template(base, caller.organization_id, suffix)
    if len(output_name.format(key="k" * 12)) > names.MODEL_NAME_MAX:
        raise OpenAIError(
            400,
            f"The fine-tuned model name would exceed {names.MODEL_NAME_MAX} characters; shorten the suffix.",
            param="suffix",
            code="invalid_value",
        )
    job = job_svc.create_job(s, caller.account_id, ("ft-" + (suffix or base))[:20])
    extra = {
        "openai": {
            "model": model,
            "method_type": kind,
            "lr_base": default_lr,
            "suffix": suffix,
            "metadata": metadata,
            "integrations": integrations,
        }
    }
    try:
        run = run_svc.create_run(
            s,
            job,
            CORE_METHOD,
            canonical,
            [run_svc.DatasetChoice(training)],
            model=base if increment is not None else model,
            train_mode=train_mode,
            extra=extra,
            validation=[run_svc.DatasetChoice(v) for v in validation],
            increment_from=increment,
            output_name=output_name,
            check_examples=False,  # below, after the validation log line OpenAI shows first
        )
    except InvalidParameter as e:
        raise _core_error(e, where, default_lr) from None
    except Conflict as e:
        raise OpenAIError(400, e.message, param="suffix") from None
    # Files were validated line by line at upload; the job's record tells that part of the story too.
    checked = f"Validating training file: {training_id}"
    record_event(
        s,
        run,
        "log",
        {"message": checked + (f" and validation file: {validation_id}" if validation_id else "")},
    )
    # Accepted, then failed in validation, as OpenAI reports it: through the job, not the HTTP status.
    if run_svc.fail_if_too_few_examples(s, run, [run_svc.DatasetChoice(training)]) is not None:
        run.extra = {
            **run.extra,
            "openai": {**extra["openai"], "error": {"code": "invalid_n_examples", "param": "training_file"}},
        }
    else:
        record_event(s, run, "log", {"message": "Files validated, moving job to queued state"})
    return render_job(s, run, caller)


async def _json_body(request: Request) -> dict[str, Any]:
    body = await json_object(request)
    if body is None:
        raise OpenAIError(400, "The body must be a JSON object.")
    return body


# ---- jobs ------------------------------------------------------------------------------------------


@router.post("/jobs")
async def create_job(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    body = CreateFineTuningJob.model_validate(await _json_body(request))

    def work() -> dict[str, Any]:
        with ctx.db.session() as s:
            return create_fine_tuning_job(s, caller, body)

    return JSONResponse(await run_in_threadpool(work))


def _metadata_filter(request: Request) -> tuple[bool, dict[str, str]]:
    """(only jobs without metadata, required key → value) from `metadata=null` / `metadata[k]=v`."""
    without = request.query_params.get("metadata") == "null"
    wanted = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.multi_items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    return without, wanted


@router.get("/jobs")
def list_jobs(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    limit = limit_param(request, JOBS_DEFAULT, PAGE_MAX)
    after = request.query_params.get("after") or None
    without, wanted = _metadata_filter(request)
    with ctx.db.session() as s:
        q = run_svc.runs_query(caller.account_id)
        if after is not None:
            key = strip_prefix(after, names.JOB_PREFIX)
            start = s.scalar(q.where(Run.key == key)) if key is not None else None
            if start is None:
                raise bad_cursor(after)
            q = q.where(Run.id < start.id)
        found: list[Run] = []
        # Metadata lives in the run's JSON extra: filtered here, read in batches, newest first.
        for run in s.scalars(q.order_by(Run.id.desc()).execution_options(yield_per=200)):
            meta = _openai_extra(run).get("metadata")
            if without and meta:
                continue
            if wanted and (not meta or any(meta.get(k) != v for k, v in wanted.items())):
                continue
            found.append(run)
            if len(found) > limit:
                break
        data = [render_job(s, r, caller) for r in found[:limit]]
    return JSONResponse(listing(data, len(found) > limit))


RETRIEVE = "/jobs/{job_id}"


@router.get(RETRIEVE)
async def retrieve_job(job_id: str, request: Request) -> Response:
    # Requests normally reach poll_job through the polling lane (api.polling); this route documents it.
    return await poll_job(request, job_id)


async def poll_job(request: Request, job_id: str) -> Response:
    """The job as clients poll it: auth inline, the run read as one Core row."""
    ctx = ctx_of(request)
    caller = await caller_dep(request, ctx)
    key = strip_prefix(job_id, names.JOB_PREFIX)
    if key is None:
        raise _not_found(job_id)

    def render(conn: Connection, view: RunView | None) -> dict[str, Any]:
        if view is None:
            raise _not_found(job_id)
        return render_view(conn, view, caller)

    return FastJSONResponse(await polled_view(ctx, caller.account_id, key, render))


POLLED = PolledCall(
    "GET",
    router.prefix + RETRIEVE,
    template_pattern(router.prefix + RETRIEVE),
    lambda request, job_id: openai_guarded(poll_job(request, job_id)),
)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(
    job_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        # A stopping run already reads as cancelled: a second cancel is refused like any finished job's.
        if run.state in TERMINAL or run.state == RunState.STOPPING:
            raise OpenAIError(
                400,
                f"Job {job_id} has already finished ({names.status_of(run.state)}) and cannot be cancelled.",
                code="job_not_cancellable",
            )
        # A running trainer checkpoints and exits (stopping → stopped); the caller sees cancelled at once.
        run_svc.request_stop(s, run)
        return JSONResponse(render_job(s, run, caller))


@router.post("/jobs/{job_id}/pause")
def pause_job(
    job_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        if run.state != RunState.RUNNING:
            raise OpenAIError(
                400,
                f"Only a running job can be paused; {job_id} is {names.status_of(run.state)}.",
                code="invalid_state",
            )
        # The trainer saves a checkpoint and frees its GPU; resume continues exactly from there.
        run_svc.request_pause(s, run)
        return JSONResponse(render_job(s, run, caller))


@router.post("/jobs/{job_id}/resume")
def resume_job(
    job_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        if run.state != RunState.PAUSED:
            raise OpenAIError(
                400,
                f"Only a paused job can be resumed; {job_id} is {names.status_of(run.state)}.",
                code="invalid_state",
            )
        run_svc.resume(s, run)
        return JSONResponse(render_job(s, run, caller))


# ---- events and checkpoints ------------------------------------------------------------------------


def _event_id(run: Run, seq: int) -> str:
    return f"{names.EVENT_PREFIX}{run.key}-{seq}"


def _cursor_number(after: str | None, prefix: str) -> int | None:
    if after is None:
        return None
    if not after.startswith(prefix):
        raise bad_cursor(after)
    try:
        value = int(after[len(prefix) :])
    except ValueError:
        raise bad_cursor(after) from None
    if not 0 <= value <= MAX_QUERY_INT:
        raise bad_cursor(after)
    return value


_NEIGHBOURS = 4  # metrics events looked at either side: an evaluation follows its step's training figures


def _metrics_near(s: Session, run_id: int, seq: int, later: bool) -> list[dict[str, Any]]:
    q = select(Event.payload).where(Event.run_id == run_id, Event.type == "metrics")
    q = (
        q.where(Event.seq > seq).order_by(Event.seq)
        if later
        else q.where(Event.seq < seq).order_by(Event.seq.desc())
    )
    return [dict(p) for p in s.scalars(q.limit(_NEIGHBOURS))]


def _joined_metrics(s: Session, run_id: int, seq: int, payload: dict[str, Any]) -> dict[str, Any] | None:
    """A metrics event as OpenAI shows it: training figures always, the same step's validation joined in.

    The trainer records an evaluation as its own event after the step's training figures. That event is
    folded into the training event of its step (None: not shown apart), or, at a step that logged no
    training figures, shown with the latest training figures before it."""
    step = payload.get("step")
    if "train_loss" in payload:
        for later in _metrics_near(s, run_id, seq, later=True):
            if later.get("step") != step:
                break
            if "eval_loss" in later and "train_loss" not in later:
                return {**later, **payload}
        return payload
    if "eval_loss" not in payload:
        return payload
    for earlier in _metrics_near(s, run_id, seq, later=False):
        if "train_loss" in earlier:
            if earlier.get("step") == step:
                return None
            train = {k: v for k, v in earlier.items() if k.startswith("train_") or k == "learning_rate"}
            return {**train, **payload}
    return payload


@router.get("/jobs/{job_id}/events")
def list_events(
    job_id: str, request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    limit = limit_param(request, EVENTS_DEFAULT, PAGE_MAX)
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        before = _cursor_number(request.query_params.get("after") or None, f"{names.EVENT_PREFIX}{run.key}-")
        model_name = run.output_name or ""
        q = select(Event).where(Event.run_id == run.id, Event.type != "progress")
        if before is not None:
            q = q.where(Event.seq < before)
        data: list[dict[str, Any]] = []
        more = False
        for e in s.scalars(q.order_by(Event.seq.desc()).execution_options(yield_per=200)):
            if e.type == "metrics" and not names.keep_metrics_step(
                int(e.payload.get("step", 0)), run.total_steps
            ):
                continue
            payload = dict(e.payload)
            if e.type == "metrics":
                joined = _joined_metrics(s, run.id, e.seq, payload)
                if joined is None:
                    continue  # shown within the same step's training event
                payload = joined
            shown_event = names.render_event(
                e.seq, e.type, payload, names.job_id(run.key), run.total_steps, model_name
            )
            if shown_event is None:
                continue
            if len(data) == limit:
                more = True
                break
            data.append(
                {
                    "object": "fine_tuning.job.event",
                    "id": _event_id(run, e.seq),
                    "created_at": int(e.time.timestamp()),
                    "level": shown_event.level,
                    "message": shown_event.message,
                    "type": shown_event.type,
                    "data": shown_event.data,
                }
            )
    return JSONResponse(listing(data, more))


def _checkpoint(run: Run, c: Checkpoint) -> dict[str, Any]:
    metrics: dict[str, Any] = {"step": c.step}
    for ours, theirs in (
        ("train_loss", "train_loss"),
        ("train_token_accuracy", "train_mean_token_accuracy"),
        ("eval_loss", "full_valid_loss"),
        ("eval_token_accuracy", "full_valid_mean_token_accuracy"),
    ):
        if c.metrics.get(ours) is not None:
            metrics[theirs] = c.metrics[ours]
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"{names.CHECKPOINT_PREFIX}{run.key}_{c.step}",
        "created_at": int(c.created_at.timestamp()),
        "fine_tuned_model_checkpoint": names.checkpoint_model(run.output_name or "", c.step),
        "fine_tuning_job_id": names.job_id(run.key),
        "step_number": c.step,
        "metrics": metrics,
    }


@router.get("/jobs/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str, request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    limit = limit_param(request, CHECKPOINTS_DEFAULT, PAGE_MAX)
    with ctx.db.session() as s:
        run = _run(s, caller, job_id)
        below = _cursor_number(
            request.query_params.get("after") or None, f"{names.CHECKPOINT_PREFIX}{run.key}_"
        )
        ckpts = [c for c in reversed(run_svc.checkpoints(s, run)) if below is None or c.step < below]
        data = [_checkpoint(run, c) for c in ckpts[:limit]]
    return JSONResponse(listing(data, len(ckpts) > limit))


# ---- checkpoint permissions (one project per account here: nothing to share) ------------------------


def _own_model(s: Session, caller: Caller, name: str) -> None:
    """The caller's fine-tuned model or checkpoint by name, else 404."""
    own = s.scalar(select(Model.id).where(Model.account_id == caller.account_id, Model.name == name))
    if own is not None:
        return
    parsed = names.parse_checkpoint_model(name)
    if parsed is not None:
        source = run_by_output_name(s, caller.account_id, parsed[0])
        if source is not None and any(c.step == parsed[1] for c in run_svc.checkpoints(s, source)):
            return
    raise OpenAIError(
        404,
        f"No fine-tuned model or checkpoint named {name!r}.",
        param="fine_tuned_model_checkpoint",
        code="model_not_found",
    )


@router.get("/checkpoints/{model}/permissions")
def list_permissions(
    model: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        _own_model(s, caller, model)
    return JSONResponse(listing([], False))


@router.post("/checkpoints/{model}/permissions")
def create_permissions(
    model: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        _own_model(s, caller, model)
    raise OpenAIError(
        400, "This server has no projects to share checkpoints with.", param="project_ids", code="unsupported"
    )


@router.delete("/checkpoints/{model}/permissions/{permission_id}")
def delete_permission(
    model: str, permission_id: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(caller_dep)
) -> JSONResponse:
    with ctx.db.session() as s:
        _own_model(s, caller, model)
    raise OpenAIError(404, f"No permission {permission_id}.", param="permission_id")


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], include_in_schema=False)
def unknown_route(rest: str) -> Response:
    raise OpenAIError(404, f"Unknown route: /v1/fine_tuning/{rest}")
