"""The `tunehouse` command: serve, keys, models, accounts, backup and restore."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunehouse.api.app import create_app, open_context
from tunehouse.config import Settings, load_settings
from tunehouse.core import accounts
from tunehouse.core.errors import DomainError
from tunehouse.core.registry import add_base_model, all_models

app = typer.Typer(
    help="Tunehouse: self-hosted LLM fine-tuning with cloud-compatible APIs.", no_args_is_help=True
)
keys_app = typer.Typer(help="API credentials.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts (tenants) and their limits.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(accounts_app, name="accounts")

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
) -> None:
    """Run the API server, the scheduler and the local executor in one process."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    where = f"one per GPU of {', '.join(settings.gpus)}" if settings.gpus else "no GPU assigned"
    err_console.print(f"Trainers: up to {settings.capacity} at a time, {where}")
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
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


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


@accounts_app.command("limit")
def accounts_limit(
    account: Annotated[str, typer.Argument(help="Account (tenant) name; created if new.")],
    max_active_runs: Annotated[
        int | None,
        typer.Option(min=1, help="Runs the account may have queued or training at once."),
    ] = None,
    no_limit: Annotated[bool, typer.Option("--no-limit", help="Lift the limit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Limit how many runs ACCOUNT may have queued or running at once; more are refused until one ends."""
    if (max_active_runs is None) == (not no_limit):
        err_console.print("[red]error:[/red] give exactly one of --max-active-runs N and --no-limit")
        raise typer.Exit(2)
    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            acc = accounts.get_or_create_account(s, account)
            accounts.set_run_limit(s, acc, max_active_runs)
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({"account": account, "max_active_runs": max_active_runs}))
        return
    shown = "no limit" if max_active_runs is None else f"at most {max_active_runs} active run(s)"
    console.print(f"{account}: {shown}")


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


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Name clients will use, e.g. Qwen2.5-0.5B-Instruct.")],
    path: Annotated[Path, typer.Argument(help="Local Hugging Face model directory.")],
) -> None:
    """Register a local Hugging Face model directory as a base model."""
    ctx = open_context(_settings())
    try:
        with ctx.db.session() as s:
            row = add_base_model(s, name, path)
            console.print(f"registered {row.name} → {row.path}")
    except DomainError as e:
        err_console.print(f"[red]error:[/red] {e.message}")
        raise typer.Exit(2) from None


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
