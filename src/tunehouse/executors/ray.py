"""Runs each trainer as a Ray job, submitted through the Jobs API of an existing cluster.

The job's ``submission_id`` is the run key (``<key>-<attempt>`` from the second launch on), so a restarted
control plane finds its jobs again by id alone. The trainer writes its events and checkpoints to the run
directory in the artifact store, which the nodes share with the control plane: nothing depends on anyone
watching the job's logs. Stop asks through a stop-request file in that directory (the trainer polls it),
because the Jobs API's own stop kills after ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s by default), too soon for a
checkpoint; the job stop comes only as the kill after the scheduler's grace period, and even then with a
longer wait set for the job.

A run of several ranks (RunSpec.gpus > 1) is one job whose driver (tunehouse.trainer.ray_train) runs the
same trainer as Ray Train ``TorchTrainer`` workers, one per rank: one GPU each on a cluster with GPUs, else
CPU workers over gloo (at most TUNEHOUSE_CPU_RANKS, as on the local executor). The workers are packed on
as few nodes as hold them, or each on a node of its own (STRICT_SPREAD) with TUNEHOUSE_RAY_PLACEMENT=spread.
The driver waits a bounded time for Ray to place its workers (TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S, asked again
TUNEHOUSE_RAY_PLACEMENT_RETRIES times): a cluster that lost a node after the launch's check passed fails
the run with what could not be placed, instead of a job that waits for ever.

With the artifacts in an object store nothing depends on a disk shared with the nodes: the job reads its
spec from the store, the stop request is an object beside the run's events there, and the scheduler reads
the events from the store.

Nothing secret goes into a job's ``runtime_env`` or metadata: the Jobs API shows both to anyone who can
reach it. Nodes bring their own storage credentials.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunehouse import storage
from tunehouse.contract.spec import STOP_REQUEST_FILE, load_spec
from tunehouse.executors.base import Exit, Resources

log = logging.getLogger(__name__)

# The job's supervisor reads this (from the job's env_vars) to decide how long SIGTERM may take before
# SIGKILL; it matters only for a stop that did not come through the stop-request file (say, `ray job stop`).
STOP_WAIT_S = 60
# How long the Jobs API may stay unreachable before the run's trainer counts as lost (then resumed).
LOST_AFTER_S = 300.0
# Kills are repeated by the scheduler every tick; the Jobs API hears one at most this often.
KILL_EVERY_S = 10.0
# How often a waiting (PENDING) job is checked against the live nodes: its node may have died meanwhile.
PENDING_RECHECK_S = 30.0
# Settings the trainer reads from its environment, none of them secret, passed on when the server has them.
FORWARDED_ENV = (
    "TUNEHOUSE_COMPILE",
    "TUNEHOUSE_ADAMW_8BIT",
    "TUNEHOUSE_ATTN_IMPLEMENTATION",
    "TUNEHOUSE_STORAGE_URL",
    # Which interface the ranks of a multi-worker run talk over (gloo on CPU, NCCL's bootstrap on GPUs).
    "GLOO_SOCKET_IFNAME",
    "NCCL_SOCKET_IFNAME",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)
# Set for the trainer so that it reports the devices Ray gave it (the Jobs API does not say which);
# tunehouse.trainer.__main__ reads it (not imported here: the server stays free of trainer code).
REPORT_DEVICES_ENV = "TUNEHOUSE_REPORT_DEVICES"
# How long the create-time check trusts its view of the cluster's nodes.
NODES_FRESH_S = 30.0
STRATEGIES = {"pack": "PACK", "spread": "STRICT_SPREAD"}
# The defaults of TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S and TUNEHOUSE_RAY_PLACEMENT_RETRIES (config.Settings).
PLACEMENT_TIMEOUT_S = 300.0
PLACEMENT_RETRIES = 2


class Unplaceable(RuntimeError):
    """No node of the cluster can ever hold what the run asks for."""


def submission_id(run_key: str, attempt: int) -> str:
    return run_key if attempt <= 1 else f"{run_key}-{attempt}"


@dataclass(frozen=True)
class Request:
    """A run's resource request as submitted: every field decided, none a constant of this module."""

    gpus: int
    cpus: float
    memory_mb: int | None


def decide_request(resources: Resources | None, nodes: list[dict[str, float]]) -> Request:
    """The run's own request where it made one; otherwise one GPU if the cluster has GPUs (as the local
    executor gives each run one), else the CPU, and one CPU to run on."""
    asked = resources or Resources()
    gpus = asked.gpus
    if gpus is None:
        gpus = 1 if any(n.get("GPU", 0) >= 1 for n in nodes) else 0
    return Request(gpus=gpus, cpus=asked.cpus if asked.cpus is not None else 1.0, memory_mb=asked.memory_mb)


def unplaceable_reason(request: Request, nodes: list[dict[str, float]], address: str) -> str | None:
    """Why no live node can hold the whole request (one job runs on one node), or None when one can."""
    need = {"GPU": float(request.gpus), "CPU": request.cpus}
    if request.memory_mb is not None:
        need["memory"] = request.memory_mb * float(1 << 20)
    if any(all(n.get(k, 0.0) >= v for k, v in need.items()) for n in nodes):
        return None

    def most(key: str) -> float:
        return max((n.get(key, 0.0) for n in nodes), default=0.0)

    asked = f"{request.gpus} GPU(s) and {request.cpus:g} CPU(s)"
    largest = f"{most('GPU'):g} GPU(s) and {most('CPU'):g} CPU(s)"
    if request.memory_mb is not None:
        asked += f" and {request.memory_mb} MB of memory"
        largest += f" and {most('memory') / (1 << 20):.0f} MB of memory"
    return (
        f"the run asks for {asked} on one node, more than any node of the Ray cluster at {address} has "
        f"({len(nodes)} live node(s); the most on one node: {largest})"
    )


@dataclass(frozen=True)
class Workers:
    """A run of several ranks as Ray Train workers: each holds ``gpus_each`` GPUs and ``cpus_each`` CPUs."""

    count: int
    gpus_each: int
    cpus_each: float
    strategy: str  # a Ray placement strategy: PACK or STRICT_SPREAD

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus_each, **({"GPU": float(self.gpus_each)} if self.gpus_each else {})}


def plan_workers(count: int, request: Request, nodes: list[dict[str, float]], placement: str) -> Workers:
    """One GPU per worker where the cluster has GPUs, else CPU workers; the run's CPUs per worker."""
    gpus = 1 if any(n.get("GPU", 0) >= 1 for n in nodes) else 0
    return Workers(count, gpus, request.cpus, STRATEGIES.get(placement, "PACK"))


def workers_unplaceable(
    plan: Workers, nodes: list[dict[str, float]], cpu_ranks: int, address: str
) -> str | None:
    """Why the cluster can never hold every worker of the plan at once, or None when it can."""
    where = f"the Ray cluster at {address} ({len(nodes)} live node(s))"
    if plan.gpus_each == 0 and plan.count > cpu_ranks:
        return (
            f"the run asks for {plan.count} GPUs and {where} has none; it trains a run on at most "
            f"{cpu_ranks} CPU worker(s) (TUNEHOUSE_CPU_RANKS)"
        )
    need = plan.resources()
    total = {k: sum(n.get(k, 0.0) for n in nodes) for k in need}
    short = [k for k, v in need.items() if total[k] < v * plan.count]
    if short:
        k = short[0]
        return (
            f"the run asks for {plan.count} workers of {need[k]:g} {k} each and {where} has "
            f"{total[k]:g} {k} in total"
        )
    if plan.strategy == "STRICT_SPREAD":
        fit = sum(1 for n in nodes if all(n.get(k, 0.0) >= v for k, v in need.items()))
        if fit < plan.count:
            return (
                f"the run spreads {plan.count} workers over as many nodes (TUNEHOUSE_RAY_PLACEMENT=spread) "
                f"and {fit} node(s) of {where} can hold one"
            )
    return None


def cluster_refusal(request: Request, nodes: list[dict[str, float]], address: str) -> str | None:
    """Why a one-process run asks for more than the whole cluster has (the create-time check; the launch
    then checks that one node holds it)."""
    total = sum(n.get("GPU", 0.0) for n in nodes)
    if request.gpus > total:
        return (
            f"the run asks for {request.gpus} GPU(s) and the Ray cluster at {address} has {total:g} "
            f"in total ({len(nodes)} live node(s))"
        )
    return None


def entrypoint(
    python: str,
    spec_path: Path | str,
    workers: Workers | None = None,
    placement_timeout_s: float = PLACEMENT_TIMEOUT_S,
    placement_retries: int = PLACEMENT_RETRIES,
) -> str:
    """The job's command: the trainer itself, or for several workers the Ray Train driver, with how long
    it waits for its workers to be placed and how many more times it asks. ``spec_path`` is the spec's
    location on the nodes: a local path, or its URL in the object store."""
    # `exec`: the trainer is the job's process itself, so a signal's exit code reaches the Jobs API
    # unchanged. An absolute interpreter: the node's PATH may find a python without Tunehouse.
    spec = shlex.quote(str(spec_path))
    if workers is None:
        return f"exec {shlex.quote(python)} -m tunehouse.trainer {spec}"
    return (
        f"exec {shlex.quote(python)} -m tunehouse.trainer.ray_train --workers {workers.count} "
        f"--gpus-each {workers.gpus_each} --cpus-each {workers.cpus_each:g} --strategy {workers.strategy} "
        f"--placement-timeout-s {placement_timeout_s:g} --placement-retries {placement_retries} {spec}"
    )


def job_env(request: Request, environ: dict[str, str]) -> dict[str, str]:
    """The job's env_vars: shown by the Jobs API to anyone, so only non-secret settings, named one by one."""
    env = {
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Ray pins a driver to one thread; the run was given its CPUs to use them.
        "OMP_NUM_THREADS": str(max(1, int(request.cpus))),
        "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),
        REPORT_DEVICES_ENV: "1",
    }
    env.update({name: environ[name] for name in FORWARDED_ENV if name in environ})
    return env


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        address: str,
        python: str | None = None,
        cpu_ranks: int = 1,
        placement: str = "pack",
        placement_timeout_s: float = PLACEMENT_TIMEOUT_S,
        placement_retries: int = PLACEMENT_RETRIES,
    ) -> None:
        if not address:
            raise ValueError(
                "TUNEHOUSE_EXECUTOR=ray needs TUNEHOUSE_RAY_ADDRESS (e.g. http://127.0.0.1:8265)"
            )
        self.address = address
        self.python = python or sys.executable
        self.cpu_ranks = cpu_ranks
        self.worker_placement = placement
        self.placement_timeout_s = placement_timeout_s
        self.placement_retries = placement_retries
        self._seen_nodes: tuple[float, list[dict[str, Any]]] | None = None
        self._client: Any = None
        self._unreachable_since: dict[str, float] = {}
        self._killed_at: dict[str, float] = {}
        self._pending_checked: dict[str, float] = {}
        self._infos: dict[str, Any] = {}  # the last JobDetails seen per submission id

    # ---- the Jobs API ----------------------------------------------------------------------------
    def _jobs(self) -> Any:
        if self._client is None:  # connects (and checks the version) on construction: made lazily
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address)
        return self._client

    def _lookup(self, sid: str) -> Any | None:
        """The job's details, or None when the cluster has no job of that id."""
        try:
            return self._jobs().get_job_info(sid)
        except RuntimeError as exc:
            if "status code 404" in str(exc):
                return None
            raise

    def _nodes(self) -> list[dict[str, Any]]:
        from ray.util.state import list_nodes

        # A dead node's details may be gone: that must not hide the live ones.
        alive = list_nodes(
            address=self.address,
            filters=[("state", "=", "ALIVE")],
            timeout=30,
            raise_on_missing_output=False,
        )
        return [{"node_id": n.node_id, "node_ip": n.node_ip, **(n.resources_total or {})} for n in alive]

    # ---- the executor interface ------------------------------------------------------------------
    def start(
        self,
        run_key: str,
        spec_path: Path,
        run_dir: Path,
        gpu: str | None = None,  # a local GPU means nothing on the cluster: Ray places GPUs itself
        resources: Resources | None = None,
        attempt: int = 1,
    ) -> dict[str, Any]:
        sid = submission_id(run_key, attempt)
        nodes = self._nodes()
        request = decide_request(resources, nodes)
        spec = load_spec(spec_path)
        workers = plan_workers(spec.gpus, request, nodes, self.worker_placement) if spec.gpus > 1 else None
        handle: dict[str, Any] = {
            "submission_id": sid,
            "ray_address": self.address,
            "run_dir": str(run_dir),
            "request": {"gpus": request.gpus, "cpus": request.cpus, "memory_mb": request.memory_mb},
        }
        # The nodes read the spec where they can: from the store when the run lives there.
        where = spec_path
        if spec.storage_dir is not None:
            handle["store_dir"] = spec.storage_dir
            where = storage.join(spec.storage_dir, spec_path.name)
        if workers is not None:
            handle["workers"] = {
                "count": workers.count,
                "gpus_each": workers.gpus_each,
                "cpus_each": workers.cpus_each,
                "strategy": workers.strategy,
            }
        # Launched before, and we crashed before the handle was stored: it is the same launch, reattach.
        if self._adoptable(self._lookup(sid), run_key):
            return handle
        orphan = self._earlier_attempt_alive(run_key, attempt)
        if orphan is not None:
            return {**handle, "submission_id": orphan}
        if workers is None:
            reason = unplaceable_reason(request, nodes, self.address)
        else:
            reason = workers_unplaceable(workers, nodes, self.cpu_ranks, self.address)
        if reason is not None:
            raise Unplaceable(reason)
        env = job_env(request, dict(os.environ))
        if workers is not None:
            # The driver only starts the workers; they hold the run's resources, and use them.
            env["OMP_NUM_THREADS"] = str(max(1, int(workers.cpus_each)))
        try:
            self._jobs().submit_job(
                entrypoint=entrypoint(
                    self.python, where, workers, self.placement_timeout_s, self.placement_retries
                ),
                submission_id=sid,
                runtime_env={"env_vars": env},
                metadata={"tunehouse_run": run_key, "attempt": str(attempt)},
                entrypoint_num_cpus=request.cpus if workers is None else 0,
                entrypoint_num_gpus=request.gpus if workers is None else 0,
                entrypoint_memory=(
                    request.memory_mb << 20 if request.memory_mb is not None and workers is None else None
                ),
            )
        except RuntimeError:
            # A duplicate id answers HTTP 500 like any other failure: the lookup tells which it was.
            if not self._adoptable(self._lookup(sid), run_key):
                raise
        return handle

    def _earlier_attempt_alive(self, run_key: str, attempt: int) -> str | None:
        """The previous attempt's job if it still runs (a crash between its submit and the stored handle
        made the scheduler think it lost): reattached, so that one run never has two trainers. One still
        waiting is withdrawn instead."""
        from ray.job_submission import JobStatus

        if attempt <= 1:
            return None
        info = self._lookup(submission_id(run_key, attempt - 1))
        if info is None or (info.metadata or {}).get("tunehouse_run") != run_key:
            return None
        if info.status == JobStatus.RUNNING:
            return str(info.submission_id)
        if info.status == JobStatus.PENDING:
            self.kill({"submission_id": info.submission_id})
        return None

    @staticmethod
    def _adoptable(info: Any | None, run_key: str) -> bool:
        if info is None:
            return False
        if (info.metadata or {}).get("tunehouse_run") != run_key:
            raise RuntimeError(f"Ray job {info.submission_id} exists and is not this run's")
        return True

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        from ray.job_submission import JobStatus

        sid = str(handle["submission_id"])
        try:
            info = self._lookup(sid)
        except (OSError, RuntimeError) as exc:  # the head is down or restarting: not (yet) a lost trainer
            return self._unreachable(sid, exc)
        self._unreachable_since.pop(sid, None)
        if info is None:
            return Exit(None)  # the cluster no longer knows it (its head was replaced): lost, resume
        self._infos[sid] = info
        if info.status == JobStatus.PENDING and self._stranded(handle):
            # Its node is gone and no other can hold it: withdrawn rather than left PENDING for ever. The
            # run's next attempt then fails at start, with the reason.
            self.kill(handle)
            return Exit(None)
        if info.status in (JobStatus.PENDING, JobStatus.RUNNING):
            return None
        self._killed_at.pop(sid, None)
        if info.status == JobStatus.SUCCEEDED:
            return Exit(0)
        if info.status == JobStatus.FAILED and info.driver_exit_code is not None:
            self._keep_log_tail(handle, info.message)
            return Exit(int(info.driver_exit_code))
        # Stopped, or failed without an exit code (its node or supervisor died): the trainer's own events
        # say what happened if it had the time; otherwise the run counts as lost.
        return Exit(None)

    def stop(self, handle: dict[str, Any]) -> None:
        # The trainer checkpoints and exits on its own when it sees the request; no job stop, no 3 s
        # deadline. With the run in an object store the request is an object there: the node that runs
        # the trainer shares no disk with this one.
        said = f"stop requested at {time.time():.3f}\n"
        if handle.get("store_dir"):
            storage.write_bytes(storage.join(str(handle["store_dir"]), STOP_REQUEST_FILE), said.encode())
            return
        path = Path(str(handle["run_dir"])) / STOP_REQUEST_FILE
        path.write_text(said, encoding="utf-8")

    def refusal(self, workers: int, resources: Resources) -> str | None:
        """The create-time check, on a view of the cluster at most NODES_FRESH_S old; None when the
        cluster cannot be asked now (the launch checks again)."""
        try:
            nodes = self._recent_nodes()
        except Exception as exc:  # the cluster is down or restarting: not a reason to refuse a run
            log.warning("listing Ray nodes for the create-time check failed: %s", exc)
            return None
        request = decide_request(resources, nodes)
        if workers > 1:
            plan = plan_workers(workers, request, nodes, self.worker_placement)
            return workers_unplaceable(plan, nodes, self.cpu_ranks, self.address)
        return cluster_refusal(request, nodes, self.address)

    def _recent_nodes(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if self._seen_nodes is None or now - self._seen_nodes[0] > NODES_FRESH_S:
            self._seen_nodes = (now, self._nodes())
        return self._seen_nodes[1]

    def kill(self, handle: dict[str, Any]) -> None:
        sid = str(handle["submission_id"])
        now = time.monotonic()
        if now - self._killed_at.get(sid, -KILL_EVERY_S) < KILL_EVERY_S:
            return
        self._killed_at[sid] = now
        try:
            self._jobs().stop_job(sid)
        except (OSError, RuntimeError) as exc:
            log.warning("stopping Ray job %s failed: %s", sid, exc)

    def placement(self, handle: dict[str, Any]) -> dict[str, Any] | None:
        """Where the job's trainer runs, once Ray has placed it (from the last poll), else None."""
        info = self._infos.get(str(handle.get("submission_id")))
        if info is None or not info.driver_node_id:
            return None
        if handle.get("workers"):
            return self._workers_placement(handle, info)
        ip = None
        try:
            ip = next((n["node_ip"] for n in self._nodes() if n["node_id"] == info.driver_node_id), None)
        except (OSError, RuntimeError) as exc:
            log.warning("listing Ray nodes failed: %s", exc)
        request = handle.get("request") or {}
        return {
            "executor": self.name,
            "submission_id": info.submission_id,
            "node_id": info.driver_node_id,
            "node_ip": ip,
            "gpus": request.get("gpus"),
            "cpus": request.get("cpus"),
        }

    def _workers_placement(self, handle: dict[str, Any], info: Any) -> dict[str, Any] | None:
        """The nodes of a multi-worker run's Ray Train workers, once all of them are up."""
        from ray.util.state import list_actors

        plan = handle["workers"]
        if not info.job_id:
            return None  # the driver has not connected yet: it has no workers
        try:
            actors = list_actors(
                address=self.address,
                filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                timeout=30,
                raise_on_missing_output=False,
            )
            ips = {n["node_id"]: n["node_ip"] for n in self._nodes()}
        except Exception as exc:  # the state API's own errors too: placement is asked again next tick
            log.warning("listing the Ray Train workers of %s failed: %s", info.submission_id, exc)
            return None
        nodes = sorted(str(a.node_id) for a in actors if a.job_id == info.job_id and a.node_id)
        if len(nodes) < int(plan["count"]):
            return None  # not all placed yet: asked again next tick
        return {
            "executor": self.name,
            "submission_id": info.submission_id,
            "node_id": nodes[0],
            "node_ip": ips.get(nodes[0]),
            "nodes": nodes,
            "node_ips": [ips.get(n) for n in nodes],
            "workers": int(plan["count"]),
            "strategy": plan["strategy"],
            "gpus": int(plan["gpus_each"]) * int(plan["count"]),
            "cpus": float(plan["cpus_each"]) * int(plan["count"]),
            "gpus_each": plan["gpus_each"],
            "cpus_each": plan["cpus_each"],
        }

    # ---- helpers ---------------------------------------------------------------------------------
    def _stranded(self, handle: dict[str, Any]) -> bool:
        """Whether a waiting job can no longer be placed on any live node (checked now and then)."""
        sid = str(handle["submission_id"])
        now = time.monotonic()
        if now - self._pending_checked.get(sid, -PENDING_RECHECK_S) < PENDING_RECHECK_S:
            return False
        self._pending_checked[sid] = now
        asked = handle.get("request") or {}
        request = Request(int(asked.get("gpus", 0)), float(asked.get("cpus", 1.0)), asked.get("memory_mb"))
        plan = handle.get("workers")
        try:
            nodes = self._nodes()
            if plan:
                count, each = int(plan["count"]), float(plan["cpus_each"])
                workers = Workers(count, int(plan["gpus_each"]), each, str(plan["strategy"]))
                return workers_unplaceable(workers, nodes, self.cpu_ranks, self.address) is not None
            return unplaceable_reason(request, nodes, self.address) is not None
        except (OSError, RuntimeError) as exc:
            log.warning("listing Ray nodes failed: %s", exc)
            return False

    def _unreachable(self, sid: str, exc: Exception) -> Exit | None:
        first = self._unreachable_since.setdefault(sid, time.monotonic())
        if time.monotonic() - first > LOST_AFTER_S:
            log.warning("Ray job %s: the Jobs API at %s unreachable too long; lost", sid, self.address)
            return Exit(None)
        log.warning("Ray job %s: the Jobs API at %s did not answer: %s", sid, self.address, exc)
        return None

    @staticmethod
    def _keep_log_tail(handle: dict[str, Any], message: str | None) -> None:
        """A failed job's message holds its last log lines: kept where the scheduler looks for a reason."""
        if not message:
            return
        err = Path(str(handle.get("run_dir", ""))) / "trainer.stderr.log"
        try:
            if err.parent.is_dir():
                err.write_text(message, encoding="utf-8")
        except OSError:
            pass
