"""`build_executor` picks the configured executor: the one place that chooses."""

from __future__ import annotations

from tunehouse.config import Settings
from tunehouse.executors.base import Executor


def build_executor(settings: Settings) -> Executor:
    if settings.executor == "ray":
        from tunehouse.executors.ray import RayExecutor  # imports Ray only when it is used

        return RayExecutor(settings.ray_address, settings.ray_python or None)
    from tunehouse.executors.local import LocalExecutor

    return LocalExecutor()
