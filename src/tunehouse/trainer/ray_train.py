"""``python -m tunehouse.trainer.ray_train --workers N --gpus-each G --cpus-each C --strategy S
--placement-timeout-s T --placement-retries R SPEC``

The driver of a multi-worker run on Ray (executors/ray.py submits it as the run's job): Ray Train's
``TorchTrainer`` starts N workers, forms their process group (gloo on CPU, NCCL on GPUs) and sets the
torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), and each worker runs the same trainer entry point
as the local executor's torchrun ranks (tunehouse.trainer.__main__), so distributed.init() finds the
group formed. Rank 0 alone reports events, as under torchrun.

The job's exit code is rank 0's (else the first failed rank's): what the scheduler reads, besides the
trainer's own events. Ray Train retries nothing (``max_failures=0``): a lost worker (its node died) ends
the job, and the driver reports that worker as the run's error, after rank 0's own report of the broken
collective, which says nothing of why.

Placement is bounded: Ray Train waits T seconds for the cluster to place every worker, then asks again,
by default for ever (``FailureConfig.controller_failure_limit`` = -1), so a cluster that lost the node a
STRICT_SPREAD run needs after the launch's check would leave the job running with no worker and no word.
Here it asks R more times; then the driver reports what could not be placed as the run's error (an event,
as rank 0 would), prints it, and exits EXIT_FAILED.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from tunehouse import storage
from tunehouse.contract.spec import EXIT_FAILED, RunSpec, load_spec

EXIT_SAID = re.compile(r"tunehouse trainer exited with code (\d+)")
# Ray Train reads this (in the driver, which passes it on to its controller) for how long to wait for the
# workers' placement group.
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# The controller errors of a worker group that never came up: no placement within the wait, or a worker
# lost while starting (ray.train.v2._internal.exceptions; matched by name, the module being internal).
UNPLACED_ERRORS = frozenset(
    {"WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError", "InsufficientClusterResourcesError"}
)


class TrainerExit(RuntimeError):
    """A worker's trainer ended with a non-zero exit code (Ray Train hears of a worker's end only by an
    exception)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"tunehouse trainer exited with code {code}")
        self.code = code


def train_worker(config: dict[str, Any]) -> None:
    """One rank: the trainer's own entry point, with the spec's location. Rank 0 first learns every
    worker's node, for the run's events."""
    import json
    import os

    import ray
    import torch.distributed as dist

    from tunehouse.trainer.__main__ import WORKER_NODES_ENV, main

    here = ray.get_runtime_context().get_node_id()
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, here)
    os.environ[WORKER_NODES_ENV] = json.dumps(nodes)
    code = main([str(config["spec"])])
    if code != 0:
        raise TrainerExit(code)


def _spec(where: str) -> RunSpec:
    if storage.is_url(where):
        return RunSpec.model_validate_json(storage.read_bytes(where))
    from pathlib import Path

    return load_spec(Path(where))


def _exit_code(exc: BaseException) -> int:
    """Rank 0's exit code if it failed, else the lowest failed rank's; EXIT_FAILED when none said."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        found = EXIT_SAID.search(str(failures[rank]))
        if found:
            return int(found.group(1))
    found = EXIT_SAID.search(str(exc))
    return int(found.group(1)) if found else EXIT_FAILED


def never_placed(exc: BaseException) -> bool:
    """Whether fit() ended because the workers were never placed (not because training failed)."""
    failure = getattr(exc, "controller_failure", None)
    return failure is not None and any(t.__name__ in UNPLACED_ERRORS for t in type(failure).__mro__)


def lost_worker(exc: BaseException, workers: int) -> str | None:
    """The run's error when a worker's process died (its node lost, say) rather than its trainer failing:
    the surviving ranks only report the broken collective. None when no worker's actor died."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        # A dead worker is heard of as its failed health check, which holds the actor's error.
        failure = getattr(failures[rank], "health_check_failure", None) or failures[rank]
        if any(t.__name__ == "RayActorError" for t in type(failure).__mro__):
            said = next((ln.strip() for ln in str(failure).splitlines() if ln.strip()), "")
            return (
                f"worker rank {rank} of {workers} was lost ({type(failure).__name__}: {said}); "
                "Ray Train ended the other workers"
            )
    return None


def unplaced_reason(
    workers: int, resources: dict[str, float], strategy: str, timeout_s: float, retries: int
) -> str:
    """The run's error when the cluster did not place its workers: what was asked, how, and how long."""
    each = ", ".join(f"{v:g} {k}" for k, v in resources.items())
    tries = retries + 1
    return (
        f"the Ray cluster did not place the run's {workers} workers ({each} each, {strategy}) within "
        f"{timeout_s:g} s, {tries} time{'s' if tries > 1 else ''} (TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S, "
        f"TUNEHOUSE_RAY_PLACEMENT_RETRIES): it has lost a node they need, or they are held by other work"
    )


def report_failure(spec: RunSpec, reason: str) -> None:
    """The reason as the run's error event and a failed status, in the run's event log (in the store
    when the run lives there), as a trainer that fails reports it. Only once every worker has ended: no
    one else writes the log then."""
    from tunehouse.trainer.events import EventWriter
    from tunehouse.trainer.store_sync import run_log_mirror

    try:
        with EventWriter(spec.events_path, stream=None, mirror=run_log_mirror(spec)) as events:
            events.error(reason, "runtime")
            events.status("failed")
    except OSError as exc:  # the exit code and the log line still tell the server
        print(f"tunehouse: could not report the failure in the run's events: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunehouse.trainer.ray_train")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--gpus-each", type=int, default=0)
    parser.add_argument("--cpus-each", type=float, default=1.0)
    parser.add_argument("--strategy", default="PACK", choices=("PACK", "SPREAD", "STRICT_SPREAD"))
    parser.add_argument("--placement-timeout-s", type=float, default=300.0)
    parser.add_argument("--placement-retries", type=int, default=2)
    parser.add_argument("spec")
    args = parser.parse_args(argv)

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = _spec(args.spec)
    # Ray Train keeps its own records (no checkpoints: the trainer writes those) where every worker sees
    # them: beside the run's files, in the store when the run lives there.
    base = spec.storage_dir if spec.storage_dir is not None else str(spec.output_dir)
    filesystem, path = storage.arrow_fs(storage.join(base, "ray-train"))
    resources = {"CPU": args.cpus_each, **({"GPU": float(args.gpus_each)} if args.gpus_each else {})}
    os.environ[START_TIMEOUT_ENV] = f"{args.placement_timeout_s:g}"
    ray.init(log_to_driver=True)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": args.spec},
        scaling_config=ScalingConfig(
            num_workers=args.workers,
            use_gpu=args.gpus_each > 0,
            resources_per_worker=resources,
            placement_strategy=args.strategy,
        ),
        run_config=RunConfig(
            name=f"run-{spec.run_id}",
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=0, controller_failure_limit=args.placement_retries),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray Train's TrainingFailedError, or its controller's
        if never_placed(exc):
            reason = unplaced_reason(
                args.workers, resources, args.strategy, args.placement_timeout_s, args.placement_retries
            )
            report_failure(spec, reason)
            print(f"tunehouse: {reason}", file=sys.stderr, flush=True)
            return EXIT_FAILED
        code = _exit_code(exc)
        lost = lost_worker(exc, args.workers)
        if lost is not None:  # after rank 0's own report of the broken collective: the run's error is this
            report_failure(spec, lost)
        print(f"tunehouse: the run's workers ended with exit code {code}: {exc}", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
