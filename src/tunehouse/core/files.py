"""Dataset files: validated line by line on upload, stored once by content hash; result files of runs."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from tunehouse import storage
from tunehouse.contract.datasets import validate_dataset
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import FileInUse, InvalidParameter, NotFound, RunRef
from tunehouse.core.ids import new_key
from tunehouse.core.states import TERMINAL
from tunehouse.store.locks import lock_row
from tunehouse.store.models import File, Run

PURPOSES = ("fine-tune",)
RESULTS_PURPOSE = "fine-tune-results"
MAX_BYTES = 512 * 1024 * 1024
RESULT_COLUMNS = (
    "step",
    "train_loss",
    "train_token_accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "eval_loss",
    "eval_token_accuracy",
)


Location = str | os.PathLike[str]  # a local folder, or a folder in the artifact store (s3://…)


def _store_blob(files_dir: Location, data: bytes, digest: str, suffix: str = ".jsonl") -> str:
    if storage.is_url(files_dir):
        dest_url = storage.join(str(files_dir), f"{digest}{suffix}")
        if storage.size(dest_url) != len(data):
            storage.write_bytes(dest_url, data)
        return dest_url
    files_dir = Path(files_dir)
    files_dir.mkdir(parents=True, exist_ok=True)
    dest = files_dir / f"{digest}{suffix}"
    if not dest.exists():
        # Write then rename, so a crash never leaves a truncated blob under its final name.
        fd, tmp = tempfile.mkstemp(dir=files_dir, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    return str(dest)


CHUNK = 1 << 20


def upload_file(
    s: Session,
    files_dir: Location,
    account_id: int,
    filename: str,
    data: bytes,
    purpose: str,
    description: str = "",
    workspace: str | None = None,
    expires_after_s: int | None = None,
) -> File:
    return upload_stream(
        s, files_dir, account_id, filename, io.BytesIO(data), purpose, description, workspace, expires_after_s
    )


def upload_stream(
    s: Session,
    files_dir: Location,
    account_id: int,
    filename: str,
    source: BinaryIO,
    purpose: str,
    description: str = "",
    workspace: str | None = None,
    expires_after_s: int | None = None,
    max_bytes: int = MAX_BYTES,
) -> File:
    """Copies `source` to storage a chunk at a time (hashing as it goes), validates the stored copy line by
    line, and records it; a rejected upload leaves nothing behind. Memory use does not grow with the file.

    With the files in an object store the bytes are spooled to a local temporary file (validation reads
    it twice), then uploaded in parts, unchanged: the stored object is byte-identical to the upload."""
    if purpose not in PURPOSES:
        raise InvalidParameter("purpose", f"purpose must be one of: {', '.join(PURPOSES)}")
    remote = storage.is_url(files_dir)
    spool_dir = None if remote else Path(files_dir)
    if spool_dir is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidParameter("file", f"the file is larger than {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size == 0:
            raise InvalidParameter("file", "the file is empty")
        report = validate_dataset(tmp, max_errors=20)
        if report.errors or report.format is None:
            problems = "; ".join(str(e) for e in report.errors) or "no training rows"
            raise InvalidParameter("file", f"{filename[:255]}: {problems}")
        sha = digest.hexdigest()
        dest = storage.join(str(files_dir), f"{sha}.jsonl")
        if remote:
            if storage.size(dest) != size:  # stored once by content: the same bytes may be there already
                storage.put_file(tmp, dest)
            tmp.unlink()
        elif Path(dest).exists():
            tmp.unlink()  # stored once by content: the same bytes are already there
        else:
            os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    now = utcnow()
    row = File(
        key=new_key(),
        account_id=account_id,
        filename=filename[:255],
        purpose=purpose,
        bytes=size,
        sha256=sha,
        format=report.format,
        rows=report.rows,
        path=dest,
        description=description,
        workspace=workspace,
        created_at=now,
        expires_at=now + timedelta(seconds=expires_after_s) if expires_after_s else None,
    )
    s.add(row)
    s.flush()
    return row


def store_results(
    s: Session,
    files_dir: Location,
    account_id: int,
    run_key: str,
    rows: list[dict[str, Any]],
    workspace: str | None = None,
) -> File:
    """A CSV of a run's step metrics, kept as a file its owner can download."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in RESULT_COLUMNS})
    data = buf.getvalue().encode()
    digest = hashlib.sha256(data).hexdigest()
    path = _store_blob(files_dir, data, digest, ".csv")
    row = File(
        key=new_key(),
        account_id=account_id,
        filename=f"{run_key}-results.csv",
        purpose=RESULTS_PURPOSE,
        bytes=len(data),
        sha256=digest,
        format="csv",
        rows=len(rows),
        path=path,
        description="",
        workspace=workspace,
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def read_content(row: File) -> bytes:
    """A stored file's bytes, wherever the store keeps them."""
    return storage.read_bytes(row.path)


def open_content(row: File) -> BinaryIO:
    """A stored file as a binary stream (read in chunks: large files stay out of memory)."""
    return storage.open_read(row.path)  # type: ignore[return-value]


def files_query(account_id: int, workspace: str | None = None, purpose: str | None = None) -> Select[Any]:
    q = select(File).where(
        File.account_id == account_id,
        File.deleted_at.is_(None),
        or_(File.expires_at.is_(None), File.expires_at > utcnow()),  # an expired file is gone
    )
    if workspace is not None:
        q = q.where(File.workspace == workspace)
    if purpose is not None:
        q = q.where(File.purpose == purpose)
    return q


def get_file(
    s: Session,
    account_id: int,
    key: str | None = None,
    int_id: int | None = None,
    workspace: str | None = None,
) -> File:
    cond = File.key == key if key is not None else File.id == int_id
    row = s.scalar(files_query(account_id, workspace).where(cond))
    if row is None:
        raise NotFound("file", key if key is not None else str(int_id))
    return row


def list_files(s: Session, account_id: int, workspace: str | None = None) -> list[File]:
    return list(s.scalars(files_query(account_id, workspace).order_by(File.id)))


def runs_using(s: Session, row: File) -> list[Run]:
    """The account's runs that have not ended and train or validate on this file, oldest first."""
    live = s.scalars(
        select(Run)
        .where(
            Run.account_id == row.account_id,
            Run.deleted_at.is_(None),
            Run.state.not_in([st.value for st in TERMINAL]),
        )
        .order_by(Run.id)
    )
    return [
        r
        for r in live
        if row.id in r.dataset.get("files", []) or row.id in r.dataset.get("validation_files", [])
    ]


def delete_file(s: Session, row: File) -> None:
    """Soft delete: runs that trained on it keep their record; the blob may be shared, so it stays.

    A run that has not ended still reads the file (a lost trainer restarts from it), so it is refused."""
    lock_row(s, row)  # a create naming this file and this delete take turns
    users = runs_using(s, row)
    if users:
        raise FileInUse(row.key, [RunRef(r.key, r.created_at) for r in users])
    row.deleted_at = utcnow()
