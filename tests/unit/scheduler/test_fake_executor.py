"""The fake executor is held to the interface the scheduler drives every executor through."""

from __future__ import annotations

import inspect

import pytest

from tests.unit.scheduler.fakes import FakeExecutor, FakeHost
from tunehouse.executors.base import Executor
from tunehouse.executors.local import LocalExecutor

METHODS = ("start", "poll", "stop", "kill")


@pytest.mark.parametrize("executor", [FakeExecutor(FakeHost()), LocalExecutor()], ids=["fake", "local"])
def test_an_executor_offers_the_executor_interface(executor: object) -> None:
    assert isinstance(executor, Executor)


@pytest.mark.parametrize("method", METHODS)
def test_the_fake_executor_takes_the_same_arguments_as_the_interface(method: str) -> None:
    def parameters(cls: type) -> list[tuple[str, object]]:
        sig = inspect.signature(getattr(cls, method))
        return [(p.name, p.default) for p in sig.parameters.values()]

    assert parameters(FakeExecutor) == parameters(Executor) == parameters(LocalExecutor)
