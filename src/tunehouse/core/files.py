"""Dataset files: validated line by line on upload, stored once by content hash."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tunehouse.core.clock import utcnow
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import new_key
from tunehouse.store.models import File
from tunehouse.trainer.data import validate_dataset

PURPOSES = ("fine-tune",)
MAX_BYTES = 512 * 1024 * 1024


def _store_blob(files_dir: Path, data: bytes, digest: str) -> Path:
    files_dir.mkdir(parents=True, exist_ok=True)
    dest = files_dir / f"{digest}.jsonl"
    if not dest.exists():
        # Write then rename, so a crash never leaves a truncated blob under its final name.
        fd, tmp = tempfile.mkstemp(dir=files_dir, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    return dest


def upload_file(
    s: Session, files_dir: Path, account_id: int, filename: str, data: bytes, purpose: str
) -> File:
    if purpose not in PURPOSES:
        raise InvalidParameter("purpose", f"purpose must be one of: {', '.join(PURPOSES)}")
    if not data:
        raise InvalidParameter("file", "the file is empty")
    if len(data) > MAX_BYTES:
        raise InvalidParameter("file", f"the file is larger than {MAX_BYTES} bytes")
    digest = hashlib.sha256(data).hexdigest()
    path = _store_blob(files_dir, data, digest)
    report = validate_dataset(path)
    if report.errors or report.format is None:
        problems = "; ".join(str(e) for e in report.errors) or "no training rows"
        raise InvalidParameter("file", f"{filename}: {problems}")
    row = File(
        key=new_key(),
        account_id=account_id,
        filename=filename[:255],
        purpose=purpose,
        bytes=len(data),
        sha256=digest,
        format=report.format,
        rows=report.rows,
        path=str(path),
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def get_file(s: Session, account_id: int, key: str | None = None, int_id: int | None = None) -> File:
    cond = File.key == key if key is not None else File.id == int_id
    row = s.scalar(select(File).where(cond, File.account_id == account_id, File.deleted_at.is_(None)))
    if row is None:
        raise NotFound("file", key if key is not None else str(int_id))
    return row


def list_files(s: Session, account_id: int) -> list[File]:
    return list(
        s.scalars(
            select(File).where(File.account_id == account_id, File.deleted_at.is_(None)).order_by(File.id)
        )
    )
