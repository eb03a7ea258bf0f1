"""Create-time refusal (core.placement): the server's executor says why a run can never be placed, and the
core refuses the create with InvalidParameter naming the field that asked (each dialect maps it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tunehouse.core import placement
from tunehouse.core.errors import InvalidParameter
from tunehouse.executors.base import Resources
from tunehouse.executors.factory import refusal_of
from tunehouse.executors.local import LocalExecutor


@pytest.fixture(autouse=True)
def no_check_left() -> Iterator[None]:
    yield
    placement.install(None)


def test_without_an_installed_check_nothing_is_refused() -> None:
    placement.refuse_unplaceable({"gpus": 64})


def test_a_run_asking_for_more_ranks_than_the_node_lends_is_refused_naming_gpus() -> None:
    placement.install(refusal_of(LocalExecutor(gpus=("0", "1"), cpu_ranks=1)))
    placement.refuse_unplaceable({"gpus": 2})
    with pytest.raises(InvalidParameter) as refused:
        placement.refuse_unplaceable({"gpus": 3})
    assert refused.value.field == "gpus"
    assert "cannot be placed" in refused.value.message and "asks for 3 GPUs" in refused.value.message


def test_a_dialects_resource_request_is_named_by_its_own_field() -> None:
    seen: list[Resources] = []

    class Cluster(LocalExecutor):
        def refusal(self, workers: int, resources: Resources) -> str | None:
            seen.append(resources)
            return "too big" if (resources.gpus or 0) > 4 else None

    placement.install(refusal_of(Cluster()))
    with pytest.raises(InvalidParameter) as refused:
        placement.refuse_unplaceable({"gpus": 1, "resourceConfig": {"gpus": 8}})
    assert refused.value.field == "resourceConfig.gpus" and seen[-1].gpus == 8


@pytest.mark.parametrize("extra", [{"gpus": 1, "resources": "lots"}, {"gpus": 1, "resources": {"gpus": -1}}])
def test_a_malformed_request_is_left_to_the_launch_to_fail_with_its_reason(extra: dict[str, Any]) -> None:
    placement.install(refusal_of(LocalExecutor()))
    placement.refuse_unplaceable(extra)
