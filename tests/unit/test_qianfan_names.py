"""Every core concept the Qianfan dialect shows has a Qianfan name."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tunehouse.api.qianfan.names import (
    HP_OUT,
    SCALE_OUT,
    TRAIN_MODE_OUT,
    V1_STATUS,
    V2_STATUS,
    hyperparameters_in,
    v2_time,
)
from tunehouse.core import catalog
from tunehouse.core.errors import InvalidParameter
from tunehouse.core.states import RunState


def test_every_catalog_hyperparameter_has_a_camel_case_name():
    caps = catalog.capabilities(catalog.TINY_MODEL)
    keys = {p.key for methods in caps.modes.values() for params in methods.values() for p in params}
    assert keys <= set(HP_OUT)


def test_every_train_mode_and_method_has_a_qianfan_name():
    assert set(catalog.TRAIN_MODES) <= set(TRAIN_MODE_OUT)
    assert set(catalog.METHODS) <= set(SCALE_OUT)


def test_every_run_state_maps_to_a_v1_and_a_v2_status():
    assert set(RunState) == set(V2_STATUS) == set(V1_STATUS)
    assert set(V2_STATUS.values()) <= {"Waiting", "Running", "Done", "Stopped", "Failed"}


def test_the_trainer_knobs_qianfan_names_arrive_under_their_canonical_keys():
    given = {"schedulerName": "cosine", "gradientCheckpointing": True, "mergeAdapter": True, "Packing": False}
    assert hyperparameters_in(given) == {
        "lr_scheduler_type": "cosine",
        "gradient_checkpointing": True,
        "merge_adapter": True,
        "packing": False,
    }


def test_lora_all_linear_true_means_every_linear_layer():
    assert hyperparameters_in({"loraAllLinear": True}) == {"lora_target_modules": "all-linear"}


def test_lora_all_linear_false_is_refused_naming_the_key():
    with pytest.raises(InvalidParameter) as info:
        hyperparameters_in({"loraAllLinear": False})
    assert info.value.field == "hyperParameterConfig.loraAllLinear"


@pytest.mark.parametrize(
    "t",
    [
        datetime(2026, 11, 1, 0, 0, 7, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=8))),
        datetime(2026, 1, 2, 3, 4, 5),
    ],
)
def test_v2_times_are_written_as_strftime_writes_them(t: datetime) -> None:
    assert v2_time(t) == t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_no_time_is_written_as_v2s_zero_time() -> None:
    assert v2_time(None) == "0000-00-00T00:00:00Z"
