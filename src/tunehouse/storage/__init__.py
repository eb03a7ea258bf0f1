"""Artifact storage: every artifact lives under one root reached through fsspec.

The root is the home directory by default, or ``s3://bucket/prefix`` (``TUNEHOUSE_STORAGE_URL``) with the
endpoint and credentials from the usual S3 environment variables. The database stores *locations*: an
absolute local path or a URL under the root, and every reader goes through the functions here, so the same
code serves both. No torch here: the server imports this module.

Large files move in bounded chunks (multipart uploads of ``PART_BYTES``, streamed downloads), writes retry
with backoff while the store is briefly unreachable, and a directory becomes visible only whole: locally by
a rename, on S3 by writing its ``last`` file (a checkpoint's state file) after everything else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

STORAGE_URL_ENV = "TUNEHOUSE_STORAGE_URL"
RETRY_ENV = "TUNEHOUSE_STORAGE_RETRY_S"
PART_BYTES = 8 << 20  # multipart part size; above S3's 5 MiB minimum
PART_CONCURRENCY = 2  # parts in flight per upload: memory stays near 2 parts whatever the file's size
READ_CHUNK = 1 << 20


class StorageError(OSError):
    """The store refused or could not be reached for longer than the retry budget."""


def is_url(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def join(base: str, *parts: str) -> str:
    """``base`` (a path or URL) with ``parts`` appended by ``/``."""
    out = str(base).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(location: str) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def normalize_root(root: str) -> str:
    """The canonical form of a storage root: an absolute local path, or ``s3://bucket[/prefix]``."""
    if not is_url(root):
        return str(Path(root).expanduser().resolve())
    scheme, rest = root.split("://", 1)
    if scheme not in ("s3", "s3a"):
        raise ValueError(f"{STORAGE_URL_ENV}: only local paths and s3:// URLs are supported, not {root!r}")
    rest = rest.strip("/")
    if not rest:
        raise ValueError(f"{STORAGE_URL_ENV}: {root!r} names no bucket")
    return f"s3://{rest}"


def cache_name(location: str) -> str:
    """A folder name for a node-local copy of ``location``: readable, and unique per location."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in basename(location))[:64]
    return f"{safe}-{digest}"


# ---- filesystems ---------------------------------------------------------------------------------


def _s3() -> Any:
    """The S3 filesystem of this process, configured from the environment (fsspec caches instances)."""
    try:
        import s3fs
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise StorageError("s3:// storage needs the s3 extra: pip install 'tunehouse[s3]'") from exc
    client: dict[str, Any] = {}
    if os.environ.get("AWS_ENDPOINT_URL"):
        client["endpoint_url"] = os.environ["AWS_ENDPOINT_URL"]
    if os.environ.get("AWS_REGION"):
        client["region_name"] = os.environ["AWS_REGION"]
    return s3fs.S3FileSystem(
        key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        client_kwargs=client,
        # Another process writes what we read (the trainer's events, checkpoints): never trust a listing
        # remembered from earlier.
        use_listings_cache=False,
    )


def _fs(location: str) -> tuple[Any, str]:
    """(fsspec filesystem, its path) for a location."""
    if is_url(location):
        scheme, rest = str(location).split("://", 1)
        if scheme not in ("s3", "s3a"):
            raise StorageError(f"unsupported storage location {location!r}")
        return _s3(), rest
    import fsspec

    return fsspec.filesystem("file"), str(location)


def arrow_fs(location: str) -> tuple[Any, str]:
    """(pyarrow filesystem or None for a local path, its path): what Ray Train's RunConfig takes."""
    if not is_url(location):
        return None, str(location)
    import pyarrow.fs

    fs, path = _fs(location)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path


# ---- retries -------------------------------------------------------------------------------------


def _permanent(exc: BaseException) -> bool:
    """Errors that waiting will not fix: a missing object, refused credentials, a bad request, a bug."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return True
    # The store's trouble surfaces as OSError (s3fs translates S3's errors) or as the HTTP client's own.
    transient = isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in TRANSIENT_MODULES
    return not transient


TRANSIENT_MODULES = frozenset({"botocore", "aiobotocore", "aiohttp", "urllib3"})


def retrying(what: str, call: Callable[[], T], budget_s: float | None = None) -> T:
    """``call()``, retried with exponential backoff while the store is unreachable, for up to
    ``budget_s`` seconds (``TUNEHOUSE_STORAGE_RETRY_S``, default 120); then StorageError with the reason."""
    budget = float(os.environ.get(RETRY_ENV, 120)) if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    delay = 0.2
    while True:
        try:
            return call()
        except Exception as exc:
            if _permanent(exc):
                raise
            if _out_of_space(exc):
                raise  # a full local disk is reported as such, not retried into a timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(f"{what}: the artifact store failed for {budget:.0f}s: {exc}") from exc
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, min(delay, left))
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


def _out_of_space(exc: BaseException) -> bool:
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


# ---- reading -------------------------------------------------------------------------------------


def exists(location: str) -> bool:
    fs, path = _fs(location)
    return bool(retrying(f"checking {location}", lambda: fs.exists(path)))


def isfile(location: str) -> bool:
    fs, path = _fs(location)
    return bool(retrying(f"checking {location}", lambda: fs.isfile(path)))


def size(location: str, budget_s: float | None = None) -> int | None:
    """Bytes in the object or file; None when there is none."""
    fs, path = _fs(location)
    try:
        info = retrying(f"reading {location}", lambda: fs.info(path), budget_s)
    except FileNotFoundError:
        return None
    return int(info.get("size") or 0) if info.get("type") != "directory" else None


def read_bytes(location: str, start: int = 0, budget_s: float | None = None) -> bytes:
    """The content from byte ``start`` on (small files: event logs, metrics, CSVs)."""
    if not is_url(location):
        with open(location, "rb") as fh:
            fh.seek(start)
            return fh.read()
    fs, path = _fs(location)
    data = retrying(f"reading {location}", lambda: fs.cat_file(path, start=start or None), budget_s)
    return bytes(data)


def open_read(location: str) -> IO[bytes]:
    """A binary reader that fetches on demand (large files stream)."""
    if not is_url(location):
        return open(location, "rb")  # noqa: SIM115 - the caller owns it
    fs, path = _fs(location)
    return retrying(f"opening {location}", lambda: fs.open(path, "rb", block_size=READ_CHUNK))  # type: ignore[no-any-return]


def iter_bytes(location: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    with open_read(location) as fh:
        while data := fh.read(chunk):
            yield data


def list_dirs(location: str) -> list[str]:
    """Locations of the folders directly under ``location`` (none when it is missing)."""
    fs, path = _fs(location)
    try:
        entries = retrying(f"listing {location}", lambda: fs.ls(path, detail=True))
    except FileNotFoundError:
        return []
    prefix = str(location).split("://", 1)[0] + "://" if is_url(location) else ""
    return [prefix + e["name"] for e in entries if e.get("type") == "directory"]


def _files_under(location: str) -> list[str]:
    """Paths of the files (objects) under ``location``; an emptied S3 prefix that still lists is none."""
    fs, path = _fs(location)
    try:
        found = retrying(f"listing {location}", lambda: fs.find(path, detail=True))
    except FileNotFoundError:
        return []
    return sorted(name for name, info in found.items() if info.get("type") == "file")


def has_objects(location: str) -> bool:
    """Whether anything is stored under ``location``. An S3 prefix whose objects were all deleted may still
    list as a folder (SeaweedFS keeps directory entries): that counts as absent."""
    return bool(_files_under(location))


def get_file(location: str, dest: Path) -> Path:
    """Download to ``dest`` (streamed; written beside it first, then renamed into place)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    fs, path = _fs(location)
    try:
        if is_url(location):  # bounded: PART_CONCURRENCY ranges of PART_BYTES in flight
            kw: dict[str, Any] = {"chunksize": PART_BYTES, "max_concurrency": PART_CONCURRENCY}
        else:
            kw = {}
        retrying(f"downloading {location}", lambda: fs.get_file(path, str(tmp), **kw))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def get_dir(location: str, dest: Path) -> Path:
    """Download every file under ``location`` into ``dest``, replacing what was there, whole or not at all."""
    files = _files_under(location)
    if not files:
        raise FileNotFoundError(f"nothing stored under {location}")
    _, root = _fs(location)
    root = root.rstrip("/")
    tmp = dest.with_name(dest.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for path in files:
            rel = path[len(root) :].lstrip("/")
            get_file(join(location, rel), tmp / rel)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def cached_dir(location: str, cache_root: Path) -> Path:
    """A node-local copy of an immutable folder (a base model in S3), fetched once per node."""
    if not is_url(location):
        return Path(location)
    dest = cache_root / cache_name(location)
    marker = dest / ".tunehouse-complete"
    if marker.is_file():
        return dest
    import fcntl

    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs on one node fetch it once
        if not marker.is_file():
            get_dir(location, dest)
            marker.write_text(location, encoding="utf-8")
    return dest


# ---- writing -------------------------------------------------------------------------------------


def put_file(src: Path, location: str) -> str:
    """Upload a local file to ``location``: multipart in ``PART_BYTES`` parts on S3, never the whole file
    in memory; locally a copy renamed into place."""
    if not is_url(location):
        dest = Path(location)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out, READ_CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return location
    fs, path = _fs(location)
    retrying(
        f"uploading {location}",
        lambda: fs.put_file(str(src), path, chunksize=PART_BYTES, max_concurrency=PART_CONCURRENCY),
    )
    return location


def write_bytes(location: str, data: bytes) -> str:
    """Store a small object whole (a spec, an event log); a local file is renamed into place."""
    if not is_url(location):
        dest = Path(location)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return location
    fs, path = _fs(location)
    retrying(f"writing {location}", lambda: fs.pipe_file(path, data))
    return location


def put_dir(src: Path, location: str, last: str | None = None, replace: bool = True) -> str:
    """Upload the folder ``src`` to ``location``, replacing what was there. ``last`` (a file name at its
    top) is written after everything else: readers take its presence to mean the folder is whole.
    ``replace=False`` adds to what is there (files other writers put there first, already fresh)."""
    if not is_url(location):
        dest = Path(location)
        if dest.resolve() == src.resolve():
            return location
        if replace:
            tmp = dest.with_name(dest.name + ".part")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(src, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
            return location
    elif replace and has_objects(location):
        remove(location)  # a stale copy (an abandoned attempt's) must not mix with this one
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).as_posix() == last)  # stable: `last` goes to the end
    for path in files:
        put_file(path, join(location, path.relative_to(src).as_posix()))
    return location


def remove(location: str) -> None:
    """Delete a file or a folder and all under it; a missing one is no error."""
    if not is_url(location):
        path = Path(location)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return
    fs, _ = _fs(location)
    # Object by object: the prefix itself may go on listing as a folder, which readers treat as absent.
    files = _files_under(location)
    if files:
        retrying(f"deleting {location}", lambda: fs.rm(files))
