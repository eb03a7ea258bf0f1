"""The database is the queue: claim queued runs under a lease, launch them, follow them to the end.

One tick: reconcile adopted runs, ingest trainer events, deliver stops, settle exits, claim new work.
Every step is idempotent, so a tick may be repeated after a crash at any point.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update

from tunehouse import storage
from tunehouse.config import Settings
from tunehouse.contract.events import parse_lines, tail_events
from tunehouse.contract.hyperparameters import STEP_DELAY_ENV, Hyperparameters
from tunehouse.contract.spec import EXIT_NO_SPACE, EXIT_STOPPED, Fetch, InitFrom, RunSpec
from tunehouse.contract.tiny import ensure_tiny_model
from tunehouse.core import runs as run_svc
from tunehouse.core.catalog import TINY_MODEL
from tunehouse.core.clock import utcnow
from tunehouse.core.events import apply_trainer_events, metric_rows, record_event
from tunehouse.core.files import store_results
from tunehouse.core.registry import register_output, resolve_base
from tunehouse.core.states import ACTIVE, RunState
from tunehouse.core.storage import out_of_space
from tunehouse.executors.base import Executor, Exit, Resources, launched, resources_of
from tunehouse.executors.gpus import free_gpus, unplaceable
from tunehouse.executors.local import rank_failure
from tunehouse.store.db import Database
from tunehouse.store.locks import lock_row
from tunehouse.store.models import Checkpoint, File, Job, Run

log = logging.getLogger(__name__)

# What names the trainer a handle refers to, in every executor's handles: a local process (its pid and start
# time) or a Ray job (its submission id). The scheduler's own keys (offsets, what the trainer said) are not.
TRAINER_IDENTITY = ("pid", "create_time", "submission_id")


def same_trainer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in TRAINER_IDENTITY)


LEASE = timedelta(seconds=30)
STOP_GRACE_S = 30.0
STORE_READ_BUDGET_S = 2.0  # a tick's read of the artifact store; the next tick tries again


def node_id() -> str:
    return os.environ.get("TUNEHOUSE_NODE_ID") or socket.gethostname()


class Scheduler:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        executor: Executor,
        owner: str | None = None,
        interval: float = 0.3,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.settings = settings
        self.executor = executor
        self.owner = owner or node_id()
        self.interval = interval
        # Every lease and stop deadline is decided on this clock (aware UTC), so tests can move time on.
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Live trainers this scheduler follows, by run: the handle it last saw them under (see _fence).
        self._following: dict[int, dict[str, Any]] = {}

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunehouse-scheduler", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._guarded("scheduler tick", self.tick)
            self._stop.wait(self.interval)

    def tick(self) -> None:
        self._adopt()
        mine = self._my_active_runs()
        self._guarded("fencing runs taken over", lambda: self._fence(set(mine)))
        for run_id in mine:
            # One run's trouble (say, a write its events need that the disk cannot take) must not keep
            # the others from being followed, nor new work from being claimed.
            self._guarded(f"following run {run_id}", lambda r=run_id: self._follow(r))
        for run_id in self.claim():
            self.launch(run_id)

    @staticmethod
    def _guarded(what: str, step: Any) -> None:
        try:
            step()
        except Exception as exc:
            if out_of_space(exc):  # expected while the disk is full; retried every tick, so no traceback
                log.warning("%s failed: no space left on device", what)
            elif isinstance(exc, storage.StorageError):  # the object store is down: likewise retried
                log.warning("%s failed: %s", what, exc)
            else:
                log.exception("%s failed", what)

    # ---- ownership -------------------------------------------------------------------------------
    def _adopt(self) -> None:
        """Take over active runs whose lease lapsed (their node died) and renew our own leases."""
        now = self.clock()
        with self.db.session() as s:
            s.execute(
                update(Run)
                .where(
                    Run.state.in_([st.value for st in ACTIVE]),
                    or_(Run.lease_owner == self.owner, Run.lease_owner.is_(None), Run.lease_expires_at < now),
                )
                .values(lease_owner=self.owner, lease_expires_at=now + LEASE)
            )

    def _mine(self) -> ColumnElement[bool]:
        """Active runs this scheduler holds the lease of."""
        return and_(Run.state.in_([st.value for st in ACTIVE]), Run.lease_owner == self.owner)

    def _my_active_runs(self) -> list[int]:
        with self.db.session() as s:
            return list(s.scalars(select(Run.id).where(self._mine()).order_by(Run.id)))

    def _fence(self, mine: set[int]) -> None:
        """A run this scheduler followed that is no longer its own (its lease lapsed while the database was
        out of reach, and another scheduler took it over; or it was settled elsewhere): its trainer is
        ended unless the run's handle still names that very trainer (another scheduler on this machine, or
        on the Ray cluster, follows it on). Two trainers of one run would write one run's checkpoints."""
        gone = [run_id for run_id in self._following if run_id not in mine]
        if not gone:
            return
        with self.db.session() as s:
            current = {
                rid: handle for rid, handle in s.execute(select(Run.id, Run.handle).where(Run.id.in_(gone)))
            }
        for run_id in gone:
            ours = self._following.pop(run_id)
            if same_trainer(current.get(run_id) or {}, ours):
                continue
            log.warning(
                "run %s is no longer followed here and its trainer is not the run's: ending it", run_id
            )
            self.executor.kill(ours)

    # ---- following a launched run ----------------------------------------------------------------
    def _follow(self, run_id: int) -> None:
        with self.db.session() as s:
            run = s.get_one(Run, run_id)
            lock_row(s, run)  # a stop or pause committed meanwhile is seen, never overwritten
            if run.state not in ACTIVE or run.lease_owner != self.owner:
                return
            if not launched(run.handle):
                # Claimed but never launched (we crashed in between, or it was stopped first): no trainer.
                exit_: Exit | None = Exit(None)
            else:
                self._ingest(s, run)
                self._deliver_stop(run)
                exit_ = self.executor.poll(run.handle)
            if exit_ is None:
                self._following[run.id] = dict(run.handle)
                self._note_placement(s, run)
                return
            if launched(run.handle):
                self._ingest(s, run)  # events written just before the exit
            self._settle(s, run, exit_)

    def _ingest(self, s: Any, run: Run) -> None:
        """Read the trainer's event file from where we stopped last time (the offset survives restarts)."""
        if not run.run_dir:
            return
        offset = int(run.handle.get("events_offset", 0))
        events, new_offset = _read_events(storage.join(run.run_dir, "events.jsonl"), offset)
        fresh = apply_trainer_events(s, run, events)
        if new_offset != offset:
            run.handle = {**run.handle, "events_offset": new_offset}
        for e in fresh:
            payload = e.get("payload") or {}
            if e.get("type") == "status":
                run.handle = {**run.handle, "trainer_state": payload.get("state")}
            elif e.get("type") == "model":
                run.handle = {**run.handle, "model": payload}

    def _note_placement(self, s: Any, run: Run) -> None:
        """Once, where an executor that places trainers itself (Ray) put this one: an event of the run."""
        describe = getattr(self.executor, "placement", None)
        if describe is None or "placement" in run.handle:
            return
        where = describe(run.handle)
        if where is None:
            return
        run.handle = {**run.handle, "placement": where}
        node = where.get("node_ip") or "?"
        if where.get("nodes"):  # Ray Train workers, one per rank
            ips = where.get("node_ips") or []
            nodes = ", ".join(f"{n} ({ip or '?'})" for n, ip in zip(where["nodes"], ips, strict=False))
            message = (
                f"trainer placed on Ray nodes {nodes}: {where.get('workers')} workers "
                f"({where.get('strategy')}) "
                f"with {where.get('gpus_each')} GPU(s) and {where.get('cpus_each')} CPU(s) each, "
                f"job {where.get('submission_id')}"
            )
        else:
            message = (
                f"trainer placed on Ray node {where.get('node_id')} ({node}) with {where.get('gpus')} GPU(s) "
                f"and {where.get('cpus')} CPU(s), job {where.get('submission_id')}"
            )
        record_event(s, run, "log", {"message": message, "placement": where})

    def _deliver_stop(self, run: Run) -> None:
        """Stop and pause reach the trainer the same way: checkpoint, then exit.

        The signal waits until the trainer has said anything: it reports only after installing its SIGTERM
        handler, and a SIGTERM before that would kill it outright. One that never speaks is killed after
        the grace period, counted from the request.
        """
        if not (run.stop_requested or run.state == RunState.PAUSING):
            return
        now = self.clock().timestamp()
        asked = float(run.handle.get("stop_asked_at") or now)
        sent = run.handle.get("stop_sent_at")
        if sent is None and run.handle.get("trainer_state") is not None:
            self.executor.stop(run.handle)
            run.handle = {**run.handle, "stop_asked_at": asked, "stop_sent_at": now}
        elif now - float(sent or asked) > STOP_GRACE_S:
            self.executor.kill(run.handle)
            run.handle = {**run.handle, "stop_asked_at": asked, "killed_at": now}
        elif "stop_asked_at" not in run.handle:
            run.handle = {**run.handle, "stop_asked_at": asked}

    def _settle(self, s: Any, run: Run, exit_: Exit) -> None:
        """The trainer is gone: decide the run's end from what it last said, or recover it."""
        self._following.pop(run.id, None)
        said = run.handle.get("trainer_state")
        code = exit_.code
        # Gone without a word of its own: our signal, a kill from outside, or the process was lost.
        unexplained = said not in ("succeeded", "stopped", "failed") and (code is None or code < 0)
        lost_rank = self._lost_rank(run, said)
        if lost_rank is not None:
            run_svc.move(s, run, RunState.FAILED, error=lost_rank)
        elif said == "succeeded" and run.handle.get("model"):
            self._register_output(s, run)
            run_svc.move(s, run, RunState.SUCCEEDED)
        elif (
            run.state == RunState.PAUSING
            and not run.stop_requested
            and (said == "stopped" or code == EXIT_STOPPED or unexplained)
        ):
            # Even a trainer killed before its first checkpoint pauses: it resumes from the last one it had.
            self._hold(s, run)
        elif run.stop_requested and (said == "stopped" or code is not None or unexplained):
            run_svc.move(s, run, RunState.STOPPED)
        elif said == "failed":
            run_svc.move(s, run, RunState.FAILED, error=run.error or "the trainer reported a failure")
        elif said == "stopped" or code == EXIT_STOPPED:
            # A signal nobody here sent (the machine shutting down, an operator): the run was interrupted,
            # not ended, and resumes from the checkpoint the trainer saved on its way out.
            self._recover(s, run, "stopped without being asked")
        elif unexplained:
            self._recover(s, run, "lost" if code is None else f"exited with code {code}")
        else:
            run_svc.move(s, run, RunState.FAILED, error=self._crash_reason(run, code or 0))
        if run.state != RunState.QUEUED:
            run.lease_owner = None
            run.lease_expires_at = None

    def _hold(self, s: Any, run: Run) -> None:
        """Paused: remember where to resume; the GPU slot is free as soon as the lease is dropped."""
        last = s.scalar(
            select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step.desc()).limit(1)
        )
        run.resume_from = last.path if last is not None else run.resume_from
        run_svc.move(s, run, RunState.PAUSED)

    def _recover(self, s: Any, run: Run, how: str) -> None:
        """The process vanished (killed, or died while nobody watched it): resume from its last checkpoint,
        a bounded number of times."""
        if run.stop_requested:
            run_svc.move(s, run, RunState.STOPPED)
            return
        last = s.scalar(
            select(Checkpoint).where(Checkpoint.run_id == run.id).order_by(Checkpoint.step.desc()).limit(1)
        )
        run.losses += 1
        bound = self.settings.max_trainer_losses
        if run.losses >= bound:
            reason = f"the trainer process was lost {run.losses} times (last: {how}); giving up"
            run_svc.move(s, run, RunState.FAILED, error=reason)
            return
        run.resume_from = last.path if last is not None else None
        run.handle = {}
        run_svc.move(s, run, RunState.QUEUED)
        resumed = f"from checkpoint step {last.step}" if last is not None else "from the start"
        message = f"trainer process {how}; requeued to resume {resumed} (loss {run.losses} of {bound})"
        record_event(s, run, "log", {"message": message})

    def _lost_rank(self, run: Run, said: str | None) -> str | None:
        """A multi-rank trainer that torchrun ended because one rank failed: that rank's reason (the others
        only report the broken collective). None when rank 0 reported its own failure, or nothing failed."""
        ranks = int(run.handle.get("ranks", 1))
        if ranks <= 1 or not run.run_dir or said in ("succeeded", "stopped") or run.stop_requested:
            return None
        err = Path(run.run_dir) / "trainer.stderr.log"
        try:
            with open(err, "rb") as fh:
                fh.seek(int(run.handle.get("stderr_from", 0)))
                text = fh.read().decode(errors="replace")
        except OSError:
            return None
        failure = rank_failure(text)
        if (
            failure is None
            or failure.exitcode in (0, EXIT_STOPPED)
            or (failure.rank == 0 and said == "failed")
        ):
            return None
        return f"rank {failure.rank} of {ranks} failed ({failure.detail}); torchrun ended the other ranks"

    def _crash_reason(self, run: Run, code: int) -> str:
        if code == EXIT_NO_SPACE:  # the trainer had no room left even to say why
            return f"no space left on device: the trainer could not write under {run.run_dir}"
        tail = ""
        workdir = run.handle.get("workdir") or run.run_dir  # the trainer's logs stay on its node
        if workdir and not storage.is_url(workdir):
            err = Path(workdir) / "trainer.stderr.log"
            if err.exists():
                lines = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()]
                tail = lines[-1] if lines else ""
        reason = f"the trainer exited with code {code}"
        return f"{reason}: {tail}" if tail else reason

    def _register_output(self, s: Any, run: Run) -> None:
        """The produced model joins the registry (with its lineage) and the step metrics become a file."""
        info = run.handle["model"]
        name = run.output_name or f"{run.base_model}-ft-{run.key}"
        model = register_output(
            s, run.account_id, name, str(info["path"]), str(info.get("kind", "full")), run.base_model, run.id
        )
        run.output_model_id = model.id
        job = s.get_one(Job, run.job_id)
        results = store_results(
            s, self.settings.files_dir, run.account_id, run.key, metric_rows(s, run), job.workspace
        )
        run.extra = {**run.extra, "result_files": [results.key]}

    # ---- claiming and launching ------------------------------------------------------------------
    def claim(self) -> list[int]:
        """Queued runs this node has room for become running under our lease; launching them is next."""
        with self.db.session() as s:
            busy = self._my_active_handles(s)
            gpus = free_gpus(self.settings.gpus, (h.get("gpu") for h in busy))
            free = self.settings.capacity - len(busy)
            if self.settings.gpus:
                free = min(free, len(gpus))
            if free <= 0:
                return []
            q = (
                select(Run.id, Run.extra)
                .where(Run.state == RunState.QUEUED, Run.deleted_at.is_(None))
                .order_by(Run.id)
                .limit(free)
            )
            if self.db.is_postgres:
                q = q.with_for_update(skip_locked=True)
            candidates = list(s.execute(q))
            claimed: list[int] = []
            now = self.clock()
            for rid, extra in candidates:
                need = run_svc.run_gpus(extra)
                # This node's own limits; a Ray cluster's are checked by its executor at launch.
                why = (
                    None
                    if self.settings.executor == "ray"
                    else unplaceable(need, self.settings.gpus, self.settings.cpu_ranks)
                )
                if why is not None:  # never placeable here: fail it with the reason, not wait forever
                    run = s.get_one(Run, rid)
                    if run.state == RunState.QUEUED:
                        reason = f"cannot be placed on {self.owner}: {why}"
                        run_svc.move(s, run, RunState.FAILED, error=reason)
                    continue
                if self.settings.gpus and need > len(gpus):
                    break  # first come, first served: later runs wait behind this one for its GPUs
                # The GPUs are part of the claim, so a restart before launch cannot hand them out twice.
                handle = {"gpu": ",".join(gpus[:need])} if self.settings.gpus else {}
                # The conditional update is the claim: only one replica's can match the queued row.
                res = s.execute(
                    update(Run)
                    .where(Run.id == rid, Run.state == RunState.QUEUED)
                    .values(lease_owner=self.owner, lease_expires_at=now + LEASE, handle=handle)
                )
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(rid)
                    gpus = gpus[need:] if self.settings.gpus else gpus
            for rid in claimed:
                run = s.get_one(Run, rid)
                s.refresh(run)
                run.attempts += 1
                run_svc.move(s, run, RunState.RUNNING)
        return claimed

    def _my_active_handles(self, s: Any) -> list[dict[str, Any]]:
        return list(s.scalars(select(Run.handle).where(self._mine())))

    def launch(self, run_id: int) -> None:
        try:
            with self.db.session() as s:
                run = s.get_one(Run, run_id)
                if run.state != RunState.RUNNING:
                    return  # paused or stopped since the claim: the next tick settles it, no trainer needed
                spec, run_loc = self._spec(s, run)
                gpu = run.handle.get("gpu")
                resources = run_resources(run)
            workdir = spec.output_dir
            spec_path = _write_spec(workdir, spec)
            if spec.storage_dir is not None:  # beside the run's other records, for whoever looks later
                storage.write_bytes(storage.join(spec.storage_dir, "spec.json"), spec_path.read_bytes())
            handle = self.executor.start(
                run.key, spec_path, workdir, gpu=gpu, resources=resources, attempt=run.attempts
            )
        except Exception as exc:  # a run that cannot start fails with the reason, not silently
            log.exception("launch of run %s failed", run_id)
            with self.db.session() as s:
                run = s.get_one(Run, run_id)
                if run.state in ACTIVE:
                    run_svc.move(s, run, RunState.FAILED, error=f"could not start the trainer: {exc}")
                    run.lease_owner = None
            return
        with self.db.session() as s:
            run = s.get_one(Run, run_id)
            if spec.storage_dir is not None:
                handle = {**handle, "workdir": str(workdir)}
            run.handle = {**handle, "gpu": gpu} if gpu is not None else handle
            self._following[run.id] = dict(run.handle)
            run.executor = self.executor.name
            run.run_dir = run_loc
            ranks = int(handle.get("ranks", 1))
            if gpu is not None:
                where = f"GPU {gpu}" if "," not in gpu else f"GPUs {gpu} ({ranks} ranks)"
                record_event(s, run, "log", {"message": f"trainer started on {where}"})
            elif ranks > 1:
                record_event(s, run, "log", {"message": f"trainer started on {ranks} CPU ranks (gloo)"})

    def _spec(self, s: Any, run: Run) -> tuple[RunSpec, str]:
        """The trainer's spec and the run's location in the store. With an object store the trainer
        works in a local scratch folder and fetches what lives in the store (``fetch``) first."""
        settings = self.settings
        base = resolve_base(s, run.base_model)
        if base.name == TINY_MODEL:
            ensure_tiny_model(settings.home)
        run_loc = storage.join(settings.runs_root, run.key)
        remote = settings.storage_remote
        workdir = settings.scratch_dir / run.key if remote else Path(run_loc)
        workdir.mkdir(parents=True, exist_ok=True)
        fetch: list[Fetch] = []

        def local(location: str, dest: Path, kind: str, cached: bool = False) -> Path:
            if not storage.is_url(location):
                return Path(location)
            fetch.append(Fetch(url=location, dest=dest, kind=kind, cached=cached))  # type: ignore[arg-type]
            return dest

        def paths(key: str) -> list[Path]:
            found = [s.get_one(File, fid).path for fid in run.dataset.get(key, [])]
            return [local(p, workdir / "data" / storage.basename(p), "file") for p in found]

        # Base models are immutable: one copy per node, shared by its runs.
        model_path = local(base.path, settings.model_cache_dir / storage.cache_name(base.path), "dir", True)
        resume = None
        if run.resume_from:
            own = run.resume_from.startswith(storage.join(run_loc, "checkpoints") + "/")
            folder = workdir / ("checkpoints" if own else "resume")  # ours rotate with the new ones
            resume = local(run.resume_from, folder / storage.basename(run.resume_from), "dir")
        init = run.extra.get("init_from")
        init_from = None
        if init:
            init_path = local(init["path"], workdir / "init" / storage.basename(init["path"]), "dir")
            init_from = InitFrom(path=init_path, kind=init["kind"])
        hp = Hyperparameters.model_validate(
            {
                **run.hyperparameters,
                "split_ratio": int(run.dataset.get("split_ratio", 0)),
                "step_delay": _test_step_delay(),
            }
        )
        spec = RunSpec(
            run_id=run.key,
            model_path=model_path,
            method=run.parameter_scale,
            train_mode=run.train_mode,
            train_files=paths("files"),
            validation_files=paths("validation_files"),
            output_dir=workdir,
            resume_from=resume,
            init_from=init_from,
            # With an object store the cache is shared there, and this node keeps its own copy.
            cache_dir=(settings.cache_dir if remote else Path(settings.storage_root) / "cache") / "tokenized",
            token_cache_url=storage.join(settings.storage_root, "cache", "tokenized") if remote else None,
            chat_template_fallback=base.chat_template_fallback,
            reserve_bytes=settings.min_free_bytes,
            gpus=run_svc.run_gpus(run.extra),
            hyperparameters=hp,
            storage_dir=run_loc if remote else None,
            fetch=fetch,
        )
        return spec, run_loc


def run_resources(run: Run) -> Resources:
    """What a run asks to be placed on (see executors.base.resources_of)."""
    return resources_of(run.extra)


def _test_step_delay() -> float:
    """Seconds the trainer waits after each step: 0 unless a test server asks for long runs. No API accepts
    it, so a user can never slow a run down this way."""
    return float(os.environ.get(STEP_DELAY_ENV) or 0)


def _read_events(location: str, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The trainer's events after byte ``offset`` of its log, on this disk or in the object store."""
    if not storage.is_url(location):
        path = Path(location)
        if path.exists() and path.stat().st_size < offset:
            offset = 0  # the file was replaced; seq numbers still keep ingestion exactly-once
        return tail_events(path, offset)
    size = storage.size(location, budget_s=STORE_READ_BUDGET_S)
    if size is None:
        return [], offset
    if size < offset:
        offset = 0  # replaced (a resume elsewhere started from the store's copy): seq numbers dedupe
    if size == offset:
        return [], offset
    events, used = parse_lines(storage.read_bytes(location, offset, budget_s=STORE_READ_BUDGET_S))
    return events, offset + used


def _write_spec(run_dir: Path, spec: RunSpec) -> Path:
    path = run_dir / "spec.json"
    tmp = run_dir / "spec.json.part"
    tmp.write_text(spec.model_dump_json(indent=2))
    os.replace(tmp, path)
    return path
