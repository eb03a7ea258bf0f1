"""Backup and restore of a home: the database as portable rows (JSON lines per table), the artifacts as
files. One format for SQLite and PostgreSQL, so a backup of either restores into either.

Rows rather than pg_dump/sqlite files: artifact paths are stored absolute, and a restore into another
home must rewrite them, which a logical copy can do on the way in.

With the artifacts in an object store (TUNEHOUSE_STORAGE_URL=s3://…) only what the home holds is copied
(the master key, the built-in model): the rows name the objects by URL, which a restore keeps, and the
bucket is backed up by the store's own means (versioning, replication).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, text

from tunehouse.config import Settings
from tunehouse.store.db import Database
from tunehouse.store.models import Base, UtcDateTime

FORMAT = 1
ARTIFACTS = ("files", "runs", "models", "master.key")  # the tokenization cache is rebuilt on demand
BATCH = 500


class BackupError(Exception):
    pass


def backup(settings: Settings, dest: Path) -> dict[str, Any]:
    """Write a backup of the home to ``dest`` (a new or empty directory); safe while the server runs."""
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty")
    (dest / "db").mkdir(parents=True, exist_ok=True)
    with _snapshot(settings.database_url) as db, db.engine.connect() as conn:
        if db.is_postgres:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one consistent view
        with conn.begin():
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            counts = {t.name: _dump(conn, t, dest / "db" / f"{t.name}.jsonl") for t in _tables()}
    # After the rows: every artifact a row names was written before its row was committed.
    for name in ARTIFACTS:
        src = settings.home / name
        if src.is_dir():
            shutil.copytree(src, dest / "home" / name, symlinks=True)
        elif src.is_file():
            (dest / "home").mkdir(exist_ok=True)
            shutil.copy2(src, dest / "home" / name)
    manifest = {
        "format": FORMAT,
        "home": str(settings.home),
        "storage_root": settings.storage_root,  # s3://…: the artifacts stayed there, not in this backup
        "revision": revision,
        "created_at": datetime.now(UTC).isoformat(),
        "rows": counts,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def restore(settings: Settings, src: Path) -> dict[str, Any]:
    """Fill this home and its (empty) database from a backup; paths under the old home move to this one."""
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src} is not a tunehouse backup: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not {FORMAT}")
    settings.home.mkdir(parents=True, exist_ok=True)
    for name in ARTIFACTS:
        if (settings.home / name).exists() and name != "models":
            raise BackupError(f"{settings.home / name} exists: restore into a fresh home")
    db = Database(settings.database_url)
    try:
        db.migrate()
        with db.engine.begin() as conn:
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            if revision != manifest["revision"]:
                raise BackupError(f"the backup is of schema {manifest['revision']}, this one is {revision}")
            for table in _tables():
                if table.name != "models" and conn.execute(select(func.count()).select_from(table)).scalar():
                    raise BackupError(f"the database already holds {table.name}: restore into an empty one")
            for table in reversed(_tables()):
                conn.execute(delete(table))  # only the built-in model a server start may have registered
            move = _mover(manifest["home"], str(settings.home))
            for table in _tables():
                _load(conn, table, src / "db" / f"{table.name}.jsonl", move)
            if db.is_postgres:
                _reset_sequences(conn)
    finally:
        db.dispose()
    for name in ARTIFACTS:
        found = src / "home" / name
        if found.is_dir():
            shutil.copytree(found, settings.home / name, symlinks=True, dirs_exist_ok=True)
        elif found.is_file():
            shutil.copy2(found, settings.home / name)
    return manifest


def _tables() -> list[Table]:
    return list(Base.metadata.sorted_tables)  # parents before children


class _snapshot:  # noqa: N801 - used as a context manager, like open()
    """The database to read from: PostgreSQL itself, or for SQLite a consistent copy made with SQLite's
    online backup (the live file may be written to meanwhile)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        self.db: Database | None = None

    def __enter__(self) -> Database:
        if self.url.startswith("sqlite"):
            self.tmp = tempfile.TemporaryDirectory(prefix="tunehouse-backup-")
            copy = Path(self.tmp.name) / "snapshot.db"
            live = sqlite3.connect(self.url.split("///", 1)[-1])
            try:
                with sqlite3.connect(copy) as out:
                    live.backup(out)
            finally:
                live.close()
            self.db = Database(f"sqlite:///{copy}")
        else:
            self.db = Database(self.url)
        return self.db

    def __exit__(self, *exc: object) -> None:
        if self.db is not None:
            self.db.dispose()
        if self.tmp is not None:
            self.tmp.cleanup()


def _dump(conn: Connection, table: Table, path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for row in conn.execute(select(table).order_by(*table.primary_key.columns)):
            values = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}
            out.write(json.dumps(values, ensure_ascii=False) + "\n")
            n += 1
    return n


def _load(conn: Connection, table: Table, path: Path, move: Any) -> None:
    if not path.exists():
        return
    times = {c.name for c in table.columns if isinstance(c.type, UtcDateTime)}
    batch: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            for k, v in row.items():
                row[k] = datetime.fromisoformat(v) if k in times and v is not None else move(v)
            batch.append(row)
            if len(batch) >= BATCH:
                conn.execute(insert(table), batch)
                batch = []
    if batch:
        conn.execute(insert(table), batch)


def _mover(old_home: str, new_home: str) -> Any:
    """Rewrites strings that are paths under the old home (anywhere in JSON values too)."""
    old = old_home.rstrip("/")

    def move(value: Any) -> Any:
        if isinstance(value, str):
            if value == old or value.startswith(old + "/"):
                return new_home + value[len(old) :]
            return value
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    return move


def _reset_sequences(conn: Connection) -> None:
    """Rows came with their ids; the next id PostgreSQL hands out must come after them."""
    for table in _tables():
        if "id" not in table.columns:
            continue
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                f"COALESCE((SELECT max(id) FROM {table.name}), 0) + 1, false)"
            )
        )
