"""The `tunehouse` command: serve, worker, keys, models, accounts, runs, backup and restore."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tunehouse.api.app import RUN_SCHEDULER_ENV, open_context
from tunehouse.api.metrics import MULTIPROC_ENV
from tunehouse.config import Settings, load_settings
from tunehouse.core import accounts
from tunehouse.core.catalog import TINY_MODEL
from tunehouse.core.errors import DomainError
from tunehouse.core.registry import add_base_model, all_models
from tunehouse.logs import configure_logging
from tunehouse.store.models import Credential, Deployment

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

app = typer.Typer(
    help="Tunehouse: self-hosted LLM fine-tuning with cloud-compatible APIs.", no_args_is_help=True
)
keys_app = typer.Typer(help="API credentials.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts (tenants) and their limits.", no_args_is_help=True)
runs_app = typer.Typer(help="Fine-tuning runs.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(accounts_app, name="accounts")
app.add_typer(runs_app, name="runs")
deployments_app = typer.Typer(help="Deployed models and checkpoints.", no_args_is_help=True)
app.add_typer(deployments_app, name="deployments")

console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:  # a malformed environment setting: say which, not a traceback
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[
        int, typer.Option(min=1, help="API processes; more than one needs --no-scheduler.")
    ] = 1,
    no_scheduler: Annotated[
        bool,
        typer.Option("--no-scheduler", help="Serve the API only; run `tunehouse worker` for the scheduler."),
    ] = False,
) -> None:
    """Run the API server, with the scheduler and the local executor in the same process unless told not."""
    import uvicorn

    configure_logging()
    if workers > 1 and not no_scheduler:
        # Each API process would run a scheduler under one lease owner and follow the others' runs.
        err_console.print(
            "[red]error:[/red] --workers N > 1 serves the API only: add --no-scheduler and run "
            "`tunehouse worker` beside it"
        )
        raise typer.Exit(2)
    settings = _settings()
    if not settings.public_url:
        # Links handed to clients (vdlLink) must be absolute; without a configured URL use the listen address.
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        settings = replace(settings, public_url=f"http://{shown}:{port}")
    ctx = open_context(settings)
    with ctx.db.session() as s:
        empty = accounts.count_accounts(s) == 0
    ctx.db.dispose()
    err_console.print(f"Tunehouse home: {settings.home}")
    err_console.print(f"Database: {ctx.db.engine.url.render_as_string(hide_password=True)}")
    if no_scheduler:
        err_console.print(f"API only, {workers} process(es); runs start where `tunehouse worker` runs")
    else:
        _print_capacity(settings)
    if empty:
        err_console.print(
            "No accounts yet. Create credentials with:\n"
            "  tunehouse keys create --account NAME --json\n"
            "then point an SDK at this server:\n"
            f"  qianfan:   QIANFAN_CONSOLE_API_BASE_URL={settings.public_url} QIANFAN_ACCESS_KEY=… "
            "QIANFAN_SECRET_KEY=…\n"
            f"  openai:    OpenAI(base_url='{settings.public_url}/v1', api_key='th-…')\n"
            f"  dashscope: dashscope.Client(base_url='{settings.public_url}/api/v1', api_key='th-…')\n"
            f"or sign in to the console at {settings.public_url}/console with the api_key.",
            soft_wrap=True,
        )
    # Worker processes are started afresh by uvicorn: they read what they need from the environment.
    os.environ["TUNEHOUSE_PUBLIC_URL"] = settings.public_url
    os.environ[RUN_SCHEDULER_ENV] = "0" if no_scheduler else "1"
    own_metrics_dir = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker counts its requests in files here; /metrics, whichever worker answers, sums them all.
        own_metrics_dir = tempfile.mkdtemp(prefix="tunehouse-metrics-")
        os.environ[MULTIPROC_ENV] = own_metrics_dir
    try:
        uvicorn.run(
            "tunehouse.api.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # our JSON logging (tunehouse.logs), set up again in each worker process
        )
    finally:
        if own_metrics_dir is not None:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _print_capacity(settings: Settings) -> None:
    if settings.executor == "ray":
        where = f"as jobs on the Ray cluster at {settings.ray_address}"
        err_console.print(f"Trainers: up to {settings.capacity} at a time, {where}")
        return
    where = f"one per GPU of {', '.join(settings.gpus)}" if settings.gpus else "no GPU assigned"
    err_console.print(f"Trainers: up to {settings.capacity} at a time, {where}")


@app.command()
def worker() -> None:
    """Run the scheduler and the executor without HTTP, beside `serve --no-scheduler`.

    Each worker on one database needs its own TUNEHOUSE_NODE_ID (the lease owner of the runs it trains).
    """
    from tunehouse.executors.factory import build_executor
    from tunehouse.scheduler.scheduler import Scheduler

    configure_logging()
    settings = _settings()
    ctx = open_context(settings)
    scheduler = Scheduler(ctx.db, settings, build_executor(settings))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    err_console.print(f"Tunehouse home: {settings.home}")
    err_console.print(f"Database: {ctx.db.engine.url.render_as_string(hide_password=True)}")
    _print_capacity(settings)
    scheduler.start()
    err_console.print(f"Worker {scheduler.owner} is scheduling")
    done.wait()
    scheduler.shutdown()
    ctx.db.dispose()


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account (tenant) name; created if new.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue an AK/SK pair and an API key for ACCOUNT."""
    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            issued = accounts.issue_keys(s, ctx.box, accounts.get_or_create_account(s, account))
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None
    payload = {
        "account": issued.account,
        "access_key": issued.access_key,
        "secret_key": issued.secret_key,
        "api_key": issued.api_key,
    }
    if as_json:
        typer.echo(json.dumps(payload))
        return
    table = Table("field", "value", title="New credentials (the secrets are shown once)")
    for k, v in payload.items():
        table.add_row(k, v)
    console.print(table)


def _credential_row(cred: Credential, account: str) -> dict[str, object]:
    return {
        "id": cred.id,
        "account": account,
        "kind": cred.kind,
        # The access key is an identifier; an API key is stored only as a hash, so its label stands in.
        "key": cred.lookup if cred.kind == "aksk" else cred.label,
        "created_at": cred.created_at.isoformat(),
        "revoked_at": cred.revoked_at.isoformat() if cred.revoked_at else None,
    }


@keys_app.command("list")
def keys_list(
    account: Annotated[str | None, typer.Option(help="Only this account's credentials.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List credentials (never their secrets), revoked ones included."""
    ctx = open_context(_settings())
    with ctx.db.session() as s:
        rows = [_credential_row(c, name) for c, name in accounts.credentials_with_accounts(s, account)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("id", "account", "kind", "key", "created", "revoked")
    for r in rows:
        table.add_row(
            *(str(r[k] or "") for k in ("id", "account", "kind", "key", "created_at", "revoked_at"))
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Credential id (from `keys list`), access key, or API key.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Revoke a credential: requests signed or sent with it are refused from now on."""
    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            cred = accounts.find_credential(s, key)
            accounts.revoke_credential(s, cred)
            row = _credential_row(cred, accounts.get_account(s, cred.account_id).name)
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(row))
        return
    console.print(f"revoked {row['kind']} {row['key']} of {row['account']}")


@accounts_app.command("limit")
def accounts_limit(
    account: Annotated[str, typer.Argument(help="Account (tenant) name; created if new.")],
    max_active_runs: Annotated[
        int | None,
        typer.Option(min=1, help="Runs the account may have queued or training at once."),
    ] = None,
    no_limit: Annotated[bool, typer.Option("--no-limit", help="Lift the run limit.")] = False,
    max_deployments: Annotated[
        int | None,
        typer.Option(min=1, help="Deployments the account may hold at once (delete one to make room)."),
    ] = None,
    no_deployment_limit: Annotated[
        bool, typer.Option("--no-deployment-limit", help="Lift the deployment limit.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Limit how many runs ACCOUNT may have queued or running, or how many deployments it may hold, at once;
    more are refused until one ends."""
    runs_given = max_active_runs is not None or no_limit
    deps_given = max_deployments is not None or no_deployment_limit
    runs_rule = "exactly one of --max-active-runs N and --no-limit"
    deps_rule = "exactly one of --max-deployments N and --no-deployment-limit"
    wrong = None
    if max_active_runs is not None and no_limit:
        wrong = runs_rule
    elif max_deployments is not None and no_deployment_limit:
        wrong = deps_rule
    elif not runs_given and not deps_given:
        wrong = f"{runs_rule} (or {deps_rule})"
    if wrong is not None:
        err_console.print(f"[red]error:[/red] give {wrong}")
        raise typer.Exit(2)
    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            acc = accounts.get_or_create_account(s, account)
            said: dict[str, object] = {"account": account}
            if runs_given:
                accounts.set_run_limit(s, acc, max_active_runs)
                said["max_active_runs"] = max_active_runs
            if deps_given:
                accounts.set_deployment_limit(s, acc, max_deployments)
                said["max_deployments"] = max_deployments
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(said))
        return
    shown = []
    if runs_given:
        shown.append(
            "no run limit" if max_active_runs is None else f"at most {max_active_runs} active run(s)"
        )
    if deps_given:
        shown.append(
            "no deployment limit" if max_deployments is None else f"at most {max_deployments} deployment(s)"
        )
    console.print(f"{account}: {', '.join(shown)}")


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List base models and fine-tuned outputs."""
    ctx = open_context(_settings())
    with ctx.db.session() as s:
        rows = [
            {"name": m.name, "kind": m.kind, "path": m.path, "base_model": m.base_model, "account": acc}
            for m, acc in all_models(s)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("name", "kind", "path", "base model", "account")
    for r in rows:
        table.add_row(
            str(r["name"]),
            str(r["kind"]),
            str(r["path"]),
            str(r["base_model"] or ""),
            str(r["account"] or ""),
        )
    console.print(table)


@runs_app.command("create")
def runs_create(
    account: Annotated[str, typer.Option(help="Account (tenant) name; created if new.")],
    model: Annotated[str, typer.Option(help="Base model (or fine-tuned model) to train.")],
    train_file: Annotated[list[Path], typer.Option("--file", help="Training data (JSONL); repeatable.")],
    method: Annotated[str, typer.Option(help="lora or full.")] = "lora",
    train_mode: Annotated[str, typer.Option(help="sft, pretrain or dpo.")] = "sft",
    gpus: Annotated[int, typer.Option(help="GPUs (ranks) the run trains on.")] = 1,
    hp: Annotated[
        list[str] | None, typer.Option(help="A hyperparameter as key=value (JSON value); repeatable.")
    ] = None,
    name: Annotated[str, typer.Option(help="Name of the job the run is created in.")] = "cli-run",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Upload the training files and queue a run (in a new job) for the scheduler."""
    from tunehouse.core import files as file_svc
    from tunehouse.core import jobs as job_svc
    from tunehouse.core import runs as run_svc

    settings = _settings()
    try:
        knobs = {k: _json_or_text(v) for k, _, v in (item.partition("=") for item in hp or [])}
        ctx = open_context(settings)
        with ctx.db.session() as s:
            owner = accounts.get_or_create_account(s, account)
            files = [
                file_svc.upload_file(s, settings.files_dir, owner.id, p.name, p.read_bytes(), "fine-tune")
                for p in train_file
            ]
            job = job_svc.create_job(s, owner.id, name, model=model, train_mode=train_mode)
            choices = [run_svc.DatasetChoice(f) for f in files]
            run = run_svc.create_run(s, job, method, knobs, choices, gpus=gpus, extra={"created_by": "cli"})
            payload = {"run": run.key, "openai_job": f"ftjob-{run.key}", "qianfan_task": f"task-{run.key}"}
    except (DomainError, OSError) as e:
        err_console.print(f"[red]error:[/red] {getattr(e, 'message', e)}")
        raise typer.Exit(2) from None
    typer.echo(json.dumps(payload) if as_json else f"queued run {run.key} ({payload['openai_job']})")


def _json_or_text(value: str) -> object:
    try:
        return json.loads(value)
    except ValueError:
        return value


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Name clients will use, e.g. Qwen2.5-0.5B-Instruct.")],
    path: Annotated[
        str, typer.Argument(help="Hugging Face model directory: a local path or s3://bucket/prefix.")
    ],
    chat_template_fallback: Annotated[
        str,
        typer.Option(
            help="If the model has no chat template: 'chatml' renders conversations as ChatML (with a "
            "warning in each run's log), 'refuse' makes chat data a data error."
        ),
    ] = "chatml",
) -> None:
    """Register a Hugging Face model directory (local, or s3:// and cached per node) as a base model."""
    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            row = add_base_model(s, name, path, chat_template_fallback)
            console.print(f"registered {row.name} → {row.path}")
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None


@models_app.command("check")
def models_check(
    name: Annotated[str, typer.Argument(help="A registered model's name.")],
    conversation: Annotated[
        Path | None,
        typer.Option(help="A JSONL file whose first line is a chat `messages` row (default: an example)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Render a conversation through NAME's chat template and show which tokens a run would train."""
    from tunehouse.contract.datasets import DataError
    from tunehouse.storage import cached_dir
    from tunehouse.trainer.preview import EXAMPLE_CONVERSATION, conversation_from_file, preview

    ctx = open_context(_settings())
    with ctx.db.session() as s:
        matches = [(m, acc) for m, acc in all_models(s) if m.name == name]
    if not matches:
        err_console.print(f"[red]error:[/red] no model named {name!r}; see `tunehouse models list`")
        raise typer.Exit(2)
    model = matches[0][0]
    if model.name == TINY_MODEL and model.account_id is None:
        from tunehouse.contract.tiny import ensure_tiny_model

        ensure_tiny_model(ctx.settings.home)
    try:
        turns = conversation_from_file(conversation) if conversation else EXAMPLE_CONVERSATION
        local = cached_dir(model.path, ctx.settings.model_cache_dir)  # an s3:// model: this node's copy
        out = preview(local, turns, model.chat_template_fallback)
    except DataError as e:
        err_console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"model": name, "segments": out["segments"]}))
        return
    if out["warning"]:
        err_console.print(f"[yellow]warning:[/yellow] {out['warning']}")
    text = Text()
    for seg in out["segments"]:
        text.append(seg["text"], style="bold black on green" if seg["trained"] else "dim")
    console.print(text, soft_wrap=True, highlight=False)
    console.print(
        f"\n{out['trained_tokens']} of {out['tokens']} tokens trained "
        "([bold black on green]highlighted[/bold black on green]); the rest is context."
    )


@app.command("backup")
def backup_home(
    path: Annotated[Path, typer.Argument(help="A new (or empty) directory to write the backup to.")],
) -> None:
    """Back up this home: its database and its artifacts (files, runs, models, master key); safe while
    the server runs."""
    from tunehouse.store.backup import BackupError, backup

    try:
        manifest = backup(_settings(), path.resolve())
    except BackupError as e:
        err_console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    rows = sum(manifest["rows"].values())
    console.print(f"backed up {manifest['home']} ({rows} rows, schema {manifest['revision']}) to {path}")


@app.command("restore")
def restore_home(
    path: Annotated[Path, typer.Argument(help="A directory written by `tunehouse backup`.")],
) -> None:
    """Restore a backup into this (fresh) home and its empty database; then `tunehouse serve` as usual."""
    from tunehouse.store.backup import BackupError, restore

    settings = _settings()
    try:
        manifest = restore(settings, path.resolve())
    except BackupError as e:
        err_console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    console.print(f"restored {manifest['home']} (backed up {manifest['created_at']}) into {settings.home}")


@deployments_app.command("list")
def deployments_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every account's deployments: model, engine, status, capacity and requests served."""
    from sqlalchemy import select

    from tunehouse.store.models import Account

    ctx = open_context(_settings())
    with ctx.db.session() as s:
        rows = [
            _deployment_row(d, acc)
            for d, acc in s.execute(
                select(Deployment, Account.name).join(Account, Deployment.account_id == Account.id)
            )
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("account", "model", "engine", "status", "capacity", "requests", "error")
    for r in rows:
        table.add_row(
            *(
                str(r[k] if r[k] is not None else "")
                for k in ("account", "model", "engine", "status", "capacity", "requests", "error")
            )
        )
    console.print(table)


def _deployment_row(d: Deployment, account: str) -> dict[str, object]:
    return {
        "deployment": d.key,
        "account": account,
        "endpoint": d.endpoint,
        "model": d.model_name,
        "base_model": d.base_model,
        "engine": d.engine,
        "status": d.status,
        "capacity": d.capacity,
        "requests": d.requests,
        "error": d.error,
    }


def _owner_of(s: Session, model: str) -> str | None:
    """The one account whose fine-tuned model (or run's output, for a checkpoint id) is named MODEL."""
    from sqlalchemy import select

    from tunehouse.api.openai.names import parse_checkpoint_model
    from tunehouse.store.models import Account, Model, Run

    parsed = parse_checkpoint_model(model)
    if parsed is not None:
        query = (
            select(Account.name).join(Run, Run.account_id == Account.id).where(Run.output_name == parsed[0])
        )
    else:
        query = (
            select(Account.name)
            .join(Model, Model.account_id == Account.id)
            .where(Model.name == model, Model.deleted_at.is_(None))
        )
    owners = sorted(set(s.scalars(query)))
    return owners[0] if len(owners) == 1 else None


@deployments_app.command("create")
def deployments_create(
    model: Annotated[str, typer.Argument(help="A base model, fine-tuned model or checkpoint id.")],
    account: Annotated[
        str | None, typer.Option(help="The owning account; found from the model when only one has it.")
    ] = None,
    capacity: Annotated[int, typer.Option(min=1, help="Requests the deployment answers at once.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Deploy MODEL for an account, named after the model; the server loads it on its first call
    (`tunehouse chat MODEL`, any SDK, or the console's playground)."""
    from sqlalchemy import select

    from tunehouse.api.openai.names import parse_checkpoint_model
    from tunehouse.core import deployments as dep_svc
    from tunehouse.store.models import Account

    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            name = account or _owner_of(s, model)
            if name is None:
                err_console.print(f"[red]error:[/red] say which account deploys {model}: --account NAME")
                raise typer.Exit(2)
            acc = s.scalar(select(Account).where(Account.name == name))
            if acc is None:
                err_console.print(f"[red]error:[/red] no account {name}")
                raise typer.Exit(2)
            target = dep_svc.resolve_model_target(s, acc.id, model)
            parsed = parse_checkpoint_model(model)
            if target is None and parsed is not None:
                target = dep_svc.resolve_checkpoint_target(s, acc.id, model, *parsed)
            if target is None:
                err_console.print(f"[red]error:[/red] {name} has no model {model}")
                raise typer.Exit(2)
            dep = dep_svc.create_deployment(s, acc.id, target, endpoint=model, capacity=capacity)
            row = _deployment_row(dep, name)
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(row))
        return
    console.print(f"deployed {model} for {row['account']} ({row['status']}; it loads on its first call)")


@deployments_app.command("delete")
def deployments_delete(
    name: Annotated[str, typer.Argument(help="The deployment's name (its model) or key.")],
    account: Annotated[str | None, typer.Option(help="The owning account, when several have NAME.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a server to free a loaded engine.")] = 120,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Delete a deployment. One a server is running is marked DELETING; that server frees its engine's memory
    and removes it (this waits for that); one no engine holds is removed at once."""
    import time

    from sqlalchemy import or_, select

    from tunehouse.core import deployments as dep_svc
    from tunehouse.store.models import Account

    ctx = open_context(_settings())
    with ctx.db.session() as s:
        query = (
            select(Deployment, Account.name)
            .join(Account, Deployment.account_id == Account.id)
            .where(or_(Deployment.endpoint == name, Deployment.key == name))
        )
        if account is not None:
            query = query.where(Account.name == account)
        found = list(s.execute(query))
        if len(found) != 1:
            why = f"no deployment {name}" if not found else f"several accounts have {name}: give --account"
            err_console.print(f"[red]error:[/red] {why}")
            raise typer.Exit(2)
        dep, owner = found[0]
        key = dep.key
        row = _deployment_row(dep, owner)
        held = dep.status in (dep_svc.S.DEPLOYING, dep_svc.S.RUNNING, dep_svc.S.DELETING)
        dep_svc.request_delete(s, dep)
        if not held:
            dep_svc.forget(s, dep)
    deadline = time.monotonic() + wait
    while held:
        with ctx.db.session() as s:
            if dep_svc.deployment_by_key(s, key) is None:
                break
        if time.monotonic() > deadline:
            err_console.print(
                f"[red]error:[/red] {name} is DELETING; no server has freed it within {wait:g} s"
            )
            raise typer.Exit(1)
        time.sleep(0.5)
    row["status"] = "DELETED"
    if as_json:
        typer.echo(json.dumps(row))
        return
    console.print(f"deleted {name} of {owner}")


@app.command("chat")
def chat(
    model: Annotated[str, typer.Argument(help="A base model, fine-tuned model or checkpoint id.")],
    api_key: Annotated[str, typer.Option(envvar="TUNEHOUSE_API_KEY", help="The account's API key (th-…).")],
    url: Annotated[str, typer.Option(help="The server.")] = "http://127.0.0.1:8080",
    message: Annotated[
        str | None, typer.Option(help="Ask this once and exit; without it, read questions from stdin.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="0 answers greedily.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
) -> None:
    """Chat with a model through the server, the answer streamed as it is generated."""
    import httpx

    history: list[dict[str, str]] = []

    def ask(text: str) -> None:
        history.append({"role": "user", "content": text})
        body = {
            "model": model,
            "messages": history,
            "stream": True,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        answer = []
        with httpx.stream(
            "POST",
            url.rstrip("/") + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(30, read=900),
        ) as r:
            if r.status_code != 200:
                r.read()
                err_console.print(f"[red]error:[/red] {r.json().get('error', {}).get('message', r.text)}")
                raise typer.Exit(1)
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    err_console.print(f"[red]error:[/red] {chunk['error'].get('message')}")
                    raise typer.Exit(1)
                for c in chunk.get("choices", []):
                    piece = (c.get("delta") or {}).get("content") or ""
                    answer.append(piece)
                    typer.echo(piece, nl=False)
        typer.echo("")
        history.append({"role": "assistant", "content": "".join(answer)})

    if message is not None:
        ask(message)
        return
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        if line.strip():
            ask(line)
