"""Qianfan V2 fine-tuning driven by the official SDK against a live server (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from qianfan.errors import RequestError

from tests.integration.conftest import CHAT_ROWS, PROMPT_RESPONSE_ROWS, TEXT_ROWS, wait_for

TERMINAL = {"Done", "Stopped", "Failed"}
FAST = {"epoch": 2, "learningRate": 0.003, "batchSize": 4, "maxSeqLen": 256}


def result(resp: Any) -> Any:
    return resp.body["result"]


def new_job(ft: Any, name: str = "faq-bot", train_mode: str = "SFT", **kw: Any) -> str:
    return str(
        result(ft.V2.create_job(name=name, model="tunehouse-tiny", train_mode=train_mode, **kw))["jobId"]
    )


def new_task(
    ft: Any, job_id: str, file_id: str, scale: str = "LoRA", hp: dict[str, Any] | None = None, split: int = 0
) -> str:
    cfg = {"sourceType": "Platform", "versions": [{"versionId": file_id}], "splitRatio": split}
    return str(
        result(
            ft.V2.create_task(job_id=job_id, params_scale=scale, hyper_params=hp or FAST, dataset_config=cfg)
        )["taskId"]
    )


def detail(ft: Any, task_id: str) -> dict[str, Any]:
    return dict(result(ft.V2.task_detail(task_id=task_id)))


def wait_terminal(ft: Any, task_id: str, seen: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        d = detail(ft, task_id)
        if seen is not None:
            seen.append(d)
        return d if d["runStatus"] in TERMINAL else None

    return dict(wait_for(check))


def status_of(exc: pytest.ExceptionInfo[RequestError]) -> tuple[int, str]:
    # The SDK keeps the request body on the error; its message carries the response body.
    return int(exc.value.status_code or 0), str(exc.value)


# ---- jobs ------------------------------------------------------------------------------------------


def test_create_job_answers_a_job_id(qianfan: Any) -> None:
    job_id = new_job(qianfan)
    assert job_id.startswith("job-") and len(job_id) == 16


def test_job_list_pages_with_marker_and_next_marker(qianfan: Any, server: Any, monkeypatch: Any) -> None:
    keys = server.keys("pager")
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
    from qianfan import config as qianfan_config

    monkeypatch.setattr(qianfan_config, "_GLOBAL_CONFIG", None)
    ids = [new_job(qianfan, name=f"job-{i}") for i in range(3)]
    first = result(qianfan.V2.job_list(max_keys=2))
    assert [j["jobId"] for j in first["jobList"]] == ids[:2]
    assert first["pageInfo"] == {"marker": "", "maxKeys": 2, "isTruncated": True, "nextMarker": ids[2]}
    second = result(qianfan.V2.job_list(max_keys=2, marker=ids[2]))
    assert [j["jobId"] for j in second["jobList"]] == ids[2:]
    assert second["pageInfo"]["isTruncated"] is False and "nextMarker" not in second["pageInfo"]
    newest_first = result(qianfan.V2.job_list(page_reverse=True))
    assert [j["jobId"] for j in newest_first["jobList"]] == ids[::-1]


def test_job_list_clamps_max_keys_to_100(qianfan: Any) -> None:
    assert result(qianfan.V2.job_list(max_keys=500))["pageInfo"]["maxKeys"] == 100


def test_job_list_filters_by_the_sdk_train_model_alias(qianfan: Any) -> None:
    pre = new_job(qianfan, name="pretrainer", train_mode="PostPretrain")
    listed = result(qianfan.V2.job_list(train_model="PostPretrain", max_keys=100))["jobList"]
    assert pre in [j["jobId"] for j in listed]
    assert {j["trainMode"] for j in listed} == {"PostPretrain"}


def test_supported_models_list_tiny_with_modes_scales_and_ranges(qianfan: Any) -> None:
    models = {m["model"]: m for m in result(qianfan.V2.supported_models())}
    tiny = models["tunehouse-tiny"]
    modes = {m["trainMode"]: m for m in tiny["supportTrainMode"]}
    assert set(modes) == {"SFT", "PostPretrain", "DPO"}
    scales = {s["parameterScale"]: s for s in modes["SFT"]["supportParameterScale"]}
    assert set(scales) == {"FullFineTuning", "LoRA"}
    params = {p["key"]: p for p in scales["LoRA"]["supportHyperParameterConfig"]}
    assert params["epoch"]["checkType"] == "range" and params["epoch"]["checkValue"] == [1, 50]
    assert params["maxSeqLen"]["checkType"] == "choice"
    assert "loraRank" in params and "loraRank" not in {
        p["key"] for p in scales["FullFineTuning"]["supportHyperParameterConfig"]
    }


# ---- training --------------------------------------------------------------------------------------


def test_lora_sft_task_runs_to_done_with_rising_progress_and_checkpoints(qianfan: Any, upload: Any) -> None:
    job_id = new_job(qianfan)
    task_id = new_task(qianfan, job_id, upload(CHAT_ROWS), hp={**FAST, "epoch": 4, "saveSteps": 4}, split=20)
    seen: list[dict[str, Any]] = []
    done = wait_terminal(qianfan, task_id, seen)
    assert done["runStatus"] == "Done", done
    running = [int(d["runProgress"][:-1]) for d in seen if d["runStatus"] == "Running"]
    assert running == sorted(running)
    assert float(done["metrics"]["trainLoss"]) > 0 and "evalLoss" in done["metrics"]
    steps = [c["step"] for c in done["checkpointList"]]
    assert steps and steps == sorted(steps) and len(steps) >= 2
    assert done["finishTime"] != "0000-00-00T00:00:00Z" and "runProgress" not in done
    assert done["vdlLink"].endswith("/console/runs/" + task_id.removeprefix("task-"))


def test_full_finetuning_on_prompt_response_data_runs_to_done(qianfan: Any, upload: Any) -> None:
    task_id = new_task(qianfan, new_job(qianfan), upload(PROMPT_RESPONSE_ROWS), scale="FullFineTuning")
    assert wait_terminal(qianfan, task_id)["runStatus"] == "Done"


def test_post_pretrain_on_text_runs_to_done(qianfan: Any, upload: Any) -> None:
    job_id = new_job(qianfan, name="pretrain", train_mode="PostPretrain")
    task_id = new_task(qianfan, job_id, upload(TEXT_ROWS), scale="FullFineTuning")
    assert wait_terminal(qianfan, task_id)["runStatus"] == "Done"


def test_stopping_a_long_task_ends_stopped_with_a_checkpoint(qianfan: Any, upload: Any, server: Any) -> None:
    job_id = new_job(qianfan)
    task_id = new_task(qianfan, job_id, upload(CHAT_ROWS * 8), hp={**FAST, "epoch": 50, "batchSize": 1})
    wait_for(lambda: _has_steps(server, task_id))
    assert detail(qianfan, task_id)["runStatus"] == "Running"
    assert result(qianfan.V2.stop_task(task_id=task_id)) is True
    stopped = wait_terminal(qianfan, task_id)
    assert stopped["runStatus"] == "Stopped"
    ckpts = list((server.home / "runs" / task_id.removeprefix("task-") / "checkpoints").iterdir())
    assert ckpts, "a stopped run keeps a checkpoint"
    listed = [c["step"] for c in stopped["checkpointList"]]
    assert listed and sorted(listed) == sorted(int(c.name.removeprefix("step-")) for c in ckpts)
    assert result(qianfan.V2.stop_task(task_id=task_id)) is False


def _has_steps(server: Any, task_id: str) -> bool:
    events = server.home / "runs" / task_id.removeprefix("task-") / "events.jsonl"
    return events.exists() and '"progress"' in events.read_text()


def test_an_incremental_task_continues_from_an_earlier_tasks_checkpoint(qianfan: Any, upload: Any) -> None:
    job_id = new_job(qianfan)
    file_id = upload(CHAT_ROWS)
    first = new_task(qianfan, job_id, file_id, hp={**FAST, "saveSteps": 4})
    steps = [c["step"] for c in wait_terminal(qianfan, first)["checkpointList"]]
    cfg = {"sourceType": "Platform", "versions": [{"versionId": file_id}]}
    with pytest.raises(RequestError) as e:
        qianfan.V2.create_task(
            job_id=job_id, params_scale="LoRA", hyper_params=FAST, dataset_config=cfg, increment_task_id=first
        )
    assert status_of(e)[0] == 400 and "incrementCheckpointStep" in status_of(e)[1]
    second = str(
        result(
            qianfan.V2.create_task(
                job_id=job_id,
                params_scale="LoRA",
                hyper_params=FAST,
                dataset_config=cfg,
                increment_task_id=first,
                increment_checkpoint_step=steps[0],
            )
        )["taskId"]
    )
    assert wait_terminal(qianfan, second)["runStatus"] == "Done"


def test_task_list_shows_the_jobs_tasks_with_pagination(qianfan: Any, upload: Any) -> None:
    job_id = new_job(qianfan)
    file_id = upload(CHAT_ROWS)
    tasks = [new_task(qianfan, job_id, file_id) for _ in range(2)]
    page = result(qianfan.V2.task_list(job_id=job_id, max_keys=1))
    assert [t["taskId"] for t in page["taskList"]] == tasks[:1]
    assert page["pageInfo"]["nextMarker"] == tasks[1]
    assert page["taskList"][0]["jobId"] == job_id
    for t in tasks:
        wait_terminal(qianfan, t)


def test_deleting_a_running_task_or_its_job_is_a_conflict_until_it_ends(qianfan: Any, upload: Any) -> None:
    job_id = new_job(qianfan)
    task_id = new_task(qianfan, job_id, upload(CHAT_ROWS * 8), hp={**FAST, "epoch": 50, "batchSize": 1})
    with pytest.raises(RequestError) as e:
        qianfan.V2.delete_task(task_id=task_id)
    assert status_of(e)[0] == 409 and "InvalidState" in status_of(e)[1]
    with pytest.raises(RequestError) as e:
        qianfan.V2.delete_job(job_id=job_id)
    assert status_of(e)[0] == 409
    qianfan.V2.stop_task(task_id=task_id)
    wait_terminal(qianfan, task_id)
    assert result(qianfan.V2.delete_task(task_id=task_id)) is True
    assert result(qianfan.V2.delete_job(job_id=job_id)) is True
    with pytest.raises(RequestError) as e:
        qianfan.V2.task_list(job_id=job_id)
    assert status_of(e)[0] == 404


# ---- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "x"}, "name"),
        ({"name": "x" * 21}, "name"),
        ({"description": "d" * 501}, "description"),
        ({"model": "no-such-model"}, "model"),
        ({"train_mode": "Unsupervised"}, "trainMode"),
        ({"parameter_scale": "Half"}, "parameterScale"),
    ],
)
def test_create_job_rejects_each_invalid_field(qianfan: Any, kwargs: dict[str, Any], field: str) -> None:
    args = {"name": "ok-name", "model": "tunehouse-tiny", "train_mode": "SFT", **kwargs}
    with pytest.raises(RequestError) as e:
        qianfan.V2.create_job(**args)
    code, body = status_of(e)
    assert code == 400 and "InvalidParameter" in body and f"param[{field}]" in body


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hp": {"epoch": 0}}, "hyperParameterConfig.epoch"),
        ({"hp": {"epoch": 51}}, "hyperParameterConfig.epoch"),
        ({"hp": {"learningRate": 0.5}}, "hyperParameterConfig.learningRate"),
        ({"hp": {"maxSeqLen": 300}}, "hyperParameterConfig.maxSeqLen"),
        ({"hp": {"batchSize": "four"}}, "hyperParameterConfig.batchSize"),
        ({"scale": "PromptTuning"}, "parameterScale"),
        ({"dataset": {"splitRatio": 21}}, "datasetConfig.splitRatio"),
        ({"dataset": {"versions": []}}, "datasetConfig.versions"),
        (
            {"dataset": {"versions": [{"versionId": "file-000000000000"}]}},
            "datasetConfig.versions[0].versionId",
        ),
        ({"dataset": {"sourceType": "Afs"}}, "datasetConfig.sourceType"),
        ({"dataset": {"versions": [{"versionId": "x", "samplingRate": 11}]}}, "datasetConfig.versions.0"),
    ],
)
def test_create_task_rejects_each_invalid_setting(
    qianfan: Any, upload: Any, change: dict[str, Any], field: str
) -> None:
    job_id = new_job(qianfan)
    cfg = {
        "sourceType": "Platform",
        "versions": [{"versionId": upload(CHAT_ROWS)}],
        "splitRatio": 0,
        **change.get("dataset", {}),
    }
    with pytest.raises(RequestError) as e:
        qianfan.V2.create_task(
            job_id=job_id,
            params_scale=change.get("scale", "LoRA"),
            hyper_params=change.get("hp", {}),
            dataset_config=cfg,
        )
    code, body = status_of(e)
    assert code == 400 and f"param[{field}" in body, body


def test_create_task_rejects_data_that_does_not_fit_the_train_mode(qianfan: Any, upload: Any) -> None:
    job_id = new_job(qianfan, name="pretrain", train_mode="PostPretrain")
    with pytest.raises(RequestError) as e:
        qianfan.V2.create_task(
            job_id=job_id,
            params_scale="LoRA",
            hyper_params={},
            dataset_config={"sourceType": "Platform", "versions": [{"versionId": upload(CHAT_ROWS)}]},
        )
    assert status_of(e)[0] == 400 and "text" in status_of(e)[1]


def test_unknown_marker_and_non_positive_max_keys_are_rejected(qianfan: Any) -> None:
    for kwargs in ({"marker": "job-doesnotexist"}, {"max_keys": 0}):
        with pytest.raises(RequestError) as e:
            qianfan.V2.job_list(**kwargs)
        assert status_of(e)[0] == 400


def test_unknown_task_is_not_found(qianfan: Any) -> None:
    with pytest.raises(RequestError) as e:
        qianfan.V2.task_detail(task_id="task-000000000000")
    code, body = status_of(e)
    assert code == 404 and "ResourceNotFound" in body


# ---- auth and tenancy ------------------------------------------------------------------------------


def test_a_wrong_secret_key_is_refused_with_403(qianfan: Any, alice: dict[str, str]) -> None:
    with pytest.raises(RequestError) as e:
        qianfan.V2.job_list(ak=alice["access_key"], sk="0" * 32)
    code, body = status_of(e)
    assert code == 403 and "SignatureDoesNotMatch" in body


def test_an_unknown_access_key_is_refused_with_403(qianfan: Any) -> None:
    with pytest.raises(RequestError) as e:
        qianfan.V2.job_list(ak="f" * 32, sk="0" * 32)
    assert status_of(e)[0] == 403


def test_another_accounts_records_are_invisible(qianfan: Any, upload: Any, bob: dict[str, str]) -> None:
    job_id = new_job(qianfan)
    task_id = new_task(qianfan, job_id, upload(CHAT_ROWS))
    as_bob = {"ak": bob["access_key"], "sk": bob["secret_key"]}
    for call in (
        lambda: qianfan.V2.task_detail(task_id=task_id, **as_bob),
        lambda: qianfan.V2.task_list(job_id=job_id, **as_bob),
        lambda: qianfan.V2.stop_task(task_id=task_id, **as_bob),
        lambda: qianfan.V2.delete_job(job_id=job_id, **as_bob),
    ):
        with pytest.raises(RequestError) as e:
            call()
        assert status_of(e)[0] == 404
    bobs_jobs = result(qianfan.V2.job_list(max_keys=100, **as_bob))["jobList"]
    assert job_id not in [j["jobId"] for j in bobs_jobs]
    wait_terminal(qianfan, task_id)


def test_another_accounts_file_cannot_be_trained_on(qianfan: Any, upload: Any, bob: dict[str, str]) -> None:
    alices_file = upload(CHAT_ROWS)
    as_bob = {"ak": bob["access_key"], "sk": bob["secret_key"]}
    bobs_job = str(
        result(qianfan.V2.create_job(name="bobs", model="tunehouse-tiny", train_mode="SFT", **as_bob))[
            "jobId"
        ]
    )
    with pytest.raises(RequestError) as e:
        qianfan.V2.create_task(
            job_id=bobs_job,
            params_scale="LoRA",
            hyper_params={},
            dataset_config={"sourceType": "Platform", "versions": [{"versionId": alices_file}]},
            **as_bob,
        )
    assert status_of(e)[0] == 400 and "versionId" in status_of(e)[1]
