"""`build_executor` picks the configured executor: the one place that chooses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunehouse.config import Settings
from tunehouse.executors.base import Executor, resources_of, workers_of


def build_executor(settings: Settings) -> Executor:
    if settings.executor == "ray":
        from tunehouse.executors.ray import RayExecutor  # imports Ray only when it is used

        return RayExecutor(
            settings.ray_address,
            settings.ray_python or None,
            cpu_ranks=settings.cpu_ranks,
            placement=settings.ray_placement,
            placement_timeout_s=settings.ray_placement_timeout_s,
            placement_retries=settings.ray_placement_retries,
        )
    from tunehouse.executors.local import LocalExecutor

    return LocalExecutor(settings.gpus, settings.cpu_ranks)


def refusal_of(executor: Executor) -> Callable[[dict[str, Any]], str | None]:
    """The create-time check of core.placement for this executor: a run's ``extra`` in, a reason out."""

    def check(extra: dict[str, Any]) -> str | None:
        try:
            resources = resources_of(extra)
        except ValueError:
            return None  # a malformed request fails the run at launch, with its own reason
        return executor.refusal(workers_of(extra), resources)

    return check
