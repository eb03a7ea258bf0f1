"""``python -m tunehouse.trainer.ray_train --workers N --gpus-each G --cpus-each C --strategy S SPEC``

The driver of a multi-worker run on Ray (executors/ray.py submits it as the run's job): Ray Train's
``TorchTrainer`` starts N workers, forms their process group (gloo on CPU, NCCL on GPUs) and sets the
torchrun variables (RANK, WORLD_SIZE, LOCAL_RANK, ...), and each worker runs the same trainer entry point
as the local executor's torchrun ranks (tunehouse.trainer.__main__), so distributed.init() finds the
group formed. Rank 0 alone reports events, as under torchrun.

The job's exit code is rank 0's (else the first failed rank's): what the scheduler reads, besides the
trainer's own events. Ray Train retries nothing (``max_failures=0``): a lost worker ends the job, and the
scheduler resumes the run from its last checkpoint like any lost trainer.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from tunehouse import storage
from tunehouse.contract.spec import EXIT_FAILED, RunSpec, load_spec

EXIT_SAID = re.compile(r"tunehouse trainer exited with code (\d+)")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunehouse.trainer.ray_train")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--gpus-each", type=int, default=0)
    parser.add_argument("--cpus-each", type=float, default=1.0)
    parser.add_argument("--strategy", default="PACK", choices=("PACK", "SPREAD", "STRICT_SPREAD"))
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
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # Ray Train's TrainingFailedError, or its controller's
        code = _exit_code(exc)
        print(f"tunehouse: the run's workers ended with exit code {code}: {exc}", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
