"""Using what was trained, Qianfan's way: the official `qianfan` SDK fine-tunes tunehouse-tiny, publishes the
task's model (`Model(task_id, job_id).publish()`), deploys it (`.deploy(DeployConfig(...))`) and chats with
its endpoint through V1 (`ChatCompletion(endpoint=…)`, BCE-signed) and V2 (`/v2/chat/completions` with a
bearer token). The oracle is the adapter loaded with transformers + PEFT directly, in this process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from qianfan.errors import APIError, RequestError

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.test_openai_chat import oracle

pytestmark = pytest.mark.heavy(4)

MODEL = "tunehouse-tiny"
SUFFIX = "adder"
SYSTEM = "You are terse."
QUESTION = [{"role": "user", "content": "What is 1 plus 2?"}]
GREEDY = {"temperature": 0, "max_output_tokens": 8}
LEARN_FAST = {"epoch": 3, "learningRate": 0.003, "batchSize": 2, "maxSeqLen": 256}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    # One backend: the records behind services are the deployments every dialect shares (unit-tested on both).
    srv = start_server(tmp_path_factory.mktemp("srv-qf-serving"), "sqlite", tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@contextmanager
def as_account(server: LiveServer, keys: dict[str, str]) -> Iterator[None]:
    """The unmodified SDK pointed at the server through its documented environment variables."""
    import qianfan.config

    with pytest.MonkeyPatch.context() as mp:
        for var in ("QIANFAN_BASE_URL", "QIANFAN_CONSOLE_API_BASE_URL", "QIANFAN_IAM_BASE_URL"):
            mp.setenv(var, server.url)
        mp.setenv("QIANFAN_ACCESS_KEY", keys["access_key"])
        mp.setenv("QIANFAN_SECRET_KEY", keys["secret_key"])
        mp.setenv("QIANFAN_DISABLE_CACHE", "true")  # no endpoint list remembered across accounts
        for var in ("TRAIN", "MODEL_PUBLISH", "DEPLOY"):
            mp.setenv(f"QIANFAN_{var}_STATUS_POLLING_INTERVAL", "0.5")
        mp.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # re-read the environment
        yield
    qianfan.config._GLOBAL_CONFIG = None  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> dict[str, str]:
    return server.keys("qf-alice")


@pytest.fixture
def sdk(server: LiveServer, alice: dict[str, str]) -> Iterator[None]:
    with as_account(server, alice):
        yield


@pytest.fixture(scope="module")
def trained(server: LiveServer, alice: dict[str, str]) -> tuple[str, str]:
    from qianfan.resources.console.finetune import FineTune

    up = httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {alice['api_key']}"},
        files={"file": ("chat.jsonl", jsonl(CHAT_ROWS))},
        data={"purpose": "fine-tune"},
        timeout=30,
    )
    assert up.status_code == 200, up.text
    with as_account(server, alice):
        job = FineTune.V2.create_job(name="adder", model=MODEL, train_mode="SFT").body["result"]["jobId"]
        cfg = {"sourceType": "Platform", "versions": [{"versionId": up.json()["id"]}]}
        task = FineTune.V2.create_task(
            job_id=job, params_scale="LoRA", hyper_params=LEARN_FAST, dataset_config=cfg
        ).body["result"]["taskId"]

        def done() -> str | None:
            status = str(FineTune.V2.task_detail(task_id=task).body["result"]["runStatus"])
            return status if status in ("Done", "Failed", "Stopped") else None

        # publish() raises on a task still Waiting: it is called once the task is Done.
        assert wait_for(done, timeout=600) == "Done"
    return str(job), str(task)


@pytest.fixture(scope="module")
def published(server: LiveServer, alice: dict[str, str], trained: tuple[str, str]) -> Any:
    from qianfan.model import Model

    job, task = trained
    with as_account(server, alice):
        return Model(task_id=task, job_id=job).publish(name="adder-model")


@pytest.fixture(scope="module")
def service(server: LiveServer, alice: dict[str, str], published: Any) -> Any:
    from qianfan.model import DeployConfig
    from qianfan.model.consts import ServiceType

    with as_account(server, alice):
        return published.deploy(DeployConfig(service_type=ServiceType.Chat, endpoint_suffix=SUFFIX, hours=1))


def v1_answer(endpoint: str, **kw: Any) -> str:
    from qianfan import ChatCompletion

    return str(
        ChatCompletion(endpoint=endpoint).do(messages=QUESTION, system=SYSTEM, **GREEDY, **kw)["result"]
    )


def adapter_path(server: LiveServer, account: str) -> str:
    rows = json.loads(server.cli("models", "list", "--json"))
    return str(next(r["path"] for r in rows if r["account"] == account and r["kind"] == "lora_adapter"))


# ---- publish -----------------------------------------------------------------------------------------


def test_publish_makes_a_ready_version_the_newest_of_its_model_set(sdk: None, published: Any) -> None:
    from qianfan.resources.console.model import Model as ModelApi

    assert published.set_id.startswith("am-") and published.id.startswith("amv-")
    detail = ModelApi.detail(model_version_id=published.id).body["result"]
    assert detail["state"] == "Ready" and detail["modelIdStr"] == published.set_id
    assert detail["sourceExtra"]["trainSourceExtra"] == {
        "taskId": published.task_id,
        "runId": published.job_id,
    }
    model_set = ModelApi.V2.describe_model_set(model_set_id=published.set_id).body["result"]
    assert model_set["modelIds"][0] == published.id and model_set["modelSetName"] == "adder-model"
    listed = ModelApi.V2.describe_custom_model_sets().body["result"]["modelSetList"]
    assert [s["modelSetId"] for s in listed] == [published.set_id]


# ---- deploy ------------------------------------------------------------------------------------------


def test_deploy_serves_the_version_behind_its_url_suffix_as_a_shared_deployment(
    sdk: None, server: LiveServer, published: Any, service: Any
) -> None:
    from qianfan.resources.console.service import Service as ServiceApi

    assert service.endpoint == SUFFIX
    got = ServiceApi.V2.service_detail(service_id=service.id).body["result"]
    assert got["runStatus"] == "Serving" and got["url"].endswith("/chat/" + SUFFIX)
    assert (got["modelSetId"], got["modelId"]) == (published.set_id, published.id)
    listed = ServiceApi.V2.service_list().body["result"]["serviceList"]
    assert service.id in [s["serviceId"] for s in listed]
    rows = json.loads(server.cli("deployments", "list", "--json"))
    assert [
        (r["status"], r["engine"]) for r in rows if r["account"] == "qf-alice" and r["endpoint"] == SUFFIX
    ] == [("RUNNING", "transformers")]


def test_a_second_service_on_the_same_url_suffix_is_refused(sdk: None, published: Any, service: Any) -> None:
    from qianfan.resources.console.service import Service as ServiceApi

    with pytest.raises(RequestError) as exc:
        ServiceApi.V2.create_service(
            model_set_id=published.set_id,
            model_id=published.id,
            name="again",
            url_suffix=SUFFIX,
            resource_config={"type": "GPU-I-2", "replicasCount": 1},
            billing={"paymentTiming": "Prepaid"},
        )
    assert exc.value.status_code == 409


def test_deploying_without_an_endpoint_suffix_is_an_invalid_url_suffix(sdk: None, published: Any) -> None:
    from qianfan.resources.console.service import Service as ServiceApi

    # The SDK's default suffix, `svc<set>_<version>`, breaks Qianfan's own rule for suffixes.
    with pytest.raises(RequestError) as exc:
        ServiceApi.V2.create_service(
            model_set_id=published.set_id,
            model_id=published.id,
            name="default",
            url_suffix=f"svc{published.set_id}_{published.id}",
            resource_config={"type": "GPU-I-2", "replicasCount": 1},
            billing={"paymentTiming": "Prepaid"},
        )
    assert exc.value.status_code == 400 and "urlSuffix" in str(exc.value)


# ---- chat --------------------------------------------------------------------------------------------


def test_fine_tuned_greedy_answer_differs_from_the_base_and_equals_loading_the_adapter_directly(
    sdk: None, server: LiveServer, service: Any
) -> None:
    tuned, base = v1_answer(service.endpoint), v1_answer(MODEL)
    assert tuned != base
    messages = [{"role": "system", "content": SYSTEM}, *QUESTION]
    base_dir = server.home / "models" / MODEL
    assert tuned == oracle(base_dir, adapter_path(server, "qf-alice"), messages, GREEDY["max_output_tokens"])
    assert base == oracle(base_dir, None, messages, GREEDY["max_output_tokens"])


def test_a_v1_answer_carries_usage_and_qianfans_flags(sdk: None, service: Any) -> None:
    from qianfan import ChatCompletion

    r = ChatCompletion(endpoint=service.endpoint).do(messages=QUESTION, system=SYSTEM, **GREEDY)
    assert r["object"] == "chat.completion" and r["need_clear_history"] is False
    assert isinstance(r["is_truncated"], bool)
    u = r["usage"]
    assert u["prompt_tokens"] > 0 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_streamed_v1_frames_join_to_the_non_streamed_answer_and_end_once(sdk: None, service: Any) -> None:
    from qianfan import ChatCompletion

    whole = ChatCompletion(endpoint=service.endpoint).do(messages=QUESTION, system=SYSTEM, **GREEDY)
    frames = list(
        ChatCompletion(endpoint=service.endpoint).do(messages=QUESTION, system=SYSTEM, stream=True, **GREEDY)
    )
    assert "".join(f["result"] for f in frames) == whole["result"]
    assert [f["sentence_id"] for f in frames] == list(range(len(frames)))
    assert [f["is_end"] for f in frames] == [False] * (len(frames) - 1) + [True]
    assert frames[-1]["usage"] == whole["usage"]


def test_v2_chat_with_a_bearer_token_gives_the_same_answer(sdk: None, service: Any) -> None:
    from qianfan import ChatCompletion

    messages = [{"role": "system", "content": SYSTEM}, *QUESTION]
    r = ChatCompletion(version=2).do(model=service.endpoint, messages=messages, temperature=0, max_tokens=8)
    assert r.body["object"] == "chat.completion"
    assert r.body["choices"][0]["message"]["content"] == v1_answer(service.endpoint)
    chunks = list(
        ChatCompletion(version=2).do(
            model=service.endpoint, messages=messages, temperature=0, max_tokens=8, stream=True
        )
    )
    text = "".join(c.body["choices"][0]["delta"].get("content") or "" for c in chunks if c.body["choices"])
    assert text == r.body["choices"][0]["message"]["content"]


def test_the_endpoint_list_the_sdk_refreshes_holds_base_models_and_own_services(
    sdk: None, service: Any
) -> None:
    from qianfan.resources.console.service import Service as ServiceApi

    listed = ServiceApi.list().body["result"]
    assert any(s["name"] == MODEL and s["url"].endswith("/chat/" + MODEL) for s in listed["common"])
    assert [s["url"].split("/")[-1] for s in listed["custom"] if s["name"] == SUFFIX] == [SUFFIX]


# ---- tenancy and errors ------------------------------------------------------------------------------


def test_another_accounts_service_and_model_are_not_found(
    server: LiveServer, published: Any, service: Any
) -> None:
    from qianfan import ChatCompletion
    from qianfan.resources.console.model import Model as ModelApi
    from qianfan.resources.console.service import Service as ServiceApi

    with as_account(server, server.keys("qf-bob")):
        with pytest.raises(APIError) as chat:
            ChatCompletion(endpoint=service.endpoint).do(messages=QUESTION)
        assert chat.value.error_code == 336005
        with pytest.raises(RequestError) as v2_chat:  # V2 is OpenAI-compatible: a 404, its body in the error
            ChatCompletion(version=2).do(model=service.endpoint, messages=QUESTION)
        assert v2_chat.value.status_code == 404 and "model_not_found" in str(v2_chat.value)
        with pytest.raises(RequestError) as describe:
            ServiceApi.V2.service_detail(service_id=service.id)
        assert describe.value.status_code == 404
        with pytest.raises(APIError) as detail:
            ModelApi.detail(model_version_id=published.id)
        assert detail.value.error_code == 500002
        assert ServiceApi.V2.service_list().body["result"]["serviceList"] == []


def test_an_out_of_range_parameter_is_an_invalid_param_error_naming_it(sdk: None, service: Any) -> None:
    from qianfan import ChatCompletion

    with pytest.raises(APIError) as exc:
        ChatCompletion(endpoint=service.endpoint).do(messages=QUESTION, temperature=5)
    assert exc.value.error_code == 336003 and "temperature" in exc.value.error_msg
