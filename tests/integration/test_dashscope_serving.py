"""Using what was trained, DashScope's way: the official `dashscope` SDK fine-tunes tunehouse-tiny, deploys
the output with `Deployments`, and calls it with `Generation.call`, the 2.x `Client()` and compatible mode.

The oracle for the fine-tuned model's greedy answer is the adapter loaded with transformers + PEFT directly
(test_openai_chat's), in this test process; the server never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dashscope
import httpx
import openai
import pytest
from dashscope import Deployments, Generation
from dashscope.v2.errors import APIStatusError, BadRequestError, NotFoundError
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.test_openai_chat import GREEDY, MODEL, QUESTION, oracle, registered_path

pytestmark = pytest.mark.heavy(4)

# test_openai_chat's LEARN_FAST in DashScope's terms: 10 × the tiny model's default learning rate.
LEARN_FAST = {"n_epochs": 3, "batch_size": 2, "learning_rate": 1e-2, "max_length": 256}
GREEDY_DS = {"temperature": 0, "max_tokens": GREEDY["max_tokens"]}
SUFFIX = "v1"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Any
) -> Iterator[LiveServer]:
    # One backend: the deployment record's storage is covered on both by the unit tests.
    srv = start_server(tmp_path_factory.mktemp("srv-ds-serving"), "sqlite", tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module", autouse=True)
def sdk(server: LiveServer) -> Iterator[None]:
    """The 1.x module API pointed at the server through its documented module attribute."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dashscope, "base_http_api_url", server.url + "/api/v1")
        yield


@pytest.fixture(scope="module")
def alice(server: LiveServer) -> str:
    return server.keys("ds-serve-alice")["api_key"]


@pytest.fixture(scope="module")
def bob(server: LiveServer) -> str:
    return server.keys("ds-serve-bob")["api_key"]


@pytest.fixture(scope="module")
def fine_tuned(alice: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ds-data") / "sums.jsonl"
    path.write_bytes(jsonl(CHAT_ROWS))
    up = dashscope.Files.upload(str(path), api_key=alice)
    assert up.status_code == 200, str(up)
    job = dashscope.FineTunes.call(
        model=MODEL,
        training_file_ids=up.output["uploaded_files"][0]["file_id"],
        hyper_parameters=LEARN_FAST,
        mode="efficient_sft",
        api_key=alice,
    )
    assert job.status_code == 200, str(job)

    def done() -> Any:
        out = dashscope.FineTunes.get(job.output.job_id, api_key=alice).output
        return out if out.status in ("SUCCEEDED", "FAILED", "CANCELED") else None

    out = wait_for(done, timeout=600)
    assert out.status == "SUCCEEDED", vars(out)
    return str(out.finetuned_output)


@pytest.fixture(scope="module")
def created(alice: str, fine_tuned: str) -> dict[str, Any]:
    """What `Deployments.call` answered: the fields before the engine has loaded."""
    resp = Deployments.call(model=fine_tuned, capacity=1, suffix=SUFFIX, plan="lora", api_key=alice)
    assert resp.status_code == 200, str(resp)
    return dict(vars(resp.output))


@pytest.fixture(scope="module")
def deployed(alice: str, created: dict[str, Any]) -> str:
    """The deployed model once `get` shows it RUNNING, polled as the SDK's CLI does."""
    name = str(created["deployed_model"])

    def running() -> bool:
        status = Deployments.get(name, api_key=alice).output.status
        assert status in ("PENDING", "DEPLOYING", "RUNNING"), status
        return bool(status == "RUNNING")

    wait_for(running, timeout=300)
    return name


def generate(key: str, model: str, **kw: Any) -> Any:
    kw.setdefault("messages", QUESTION)
    kw.setdefault("result_format", "message")
    resp = Generation.call(model=model, api_key=key, **GREEDY_DS, **kw)
    assert resp.status_code == 200, str(resp)
    return resp


def content(resp: Any) -> str:
    return str(resp.output.choices[0].message.content)


def error_of(resp: Any) -> tuple[int, str]:
    assert resp.output is None, str(resp)
    return int(resp.status_code), str(resp.code)


# ---- deployments -----------------------------------------------------------------------------------


def test_deploying_a_fine_tuned_model_answers_pending_under_its_suffixed_name(
    created: dict[str, Any], fine_tuned: str
) -> None:
    assert created["deployed_model"] == f"{fine_tuned}-{SUFFIX}"
    assert created["status"] == "PENDING"
    assert (created["model_name"], created["base_model"]) == (fine_tuned, MODEL)
    assert created["capacity"] == 1 and created["ready_capacity"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", created["gmt_create"])
    assert created["gmt_modified"] and created["workspace_id"]


def test_a_running_deployment_is_ready_at_its_capacity_and_listed(alice: str, deployed: str) -> None:
    got = Deployments.get(deployed, api_key=alice).output
    assert (got.status, got.capacity, got.ready_capacity) == ("RUNNING", 1, 1)
    page = Deployments.list(page_no=1, page_size=10, api_key=alice).output
    assert deployed in [d.deployed_model for d in page.deployments]
    assert page.total >= 1 and (page.page_no, page.page_size) == (1, 10)


def test_a_second_deployment_of_the_same_model_and_suffix_is_a_409_conflict(
    server: LiveServer, alice: str, fine_tuned: str, deployed: str
) -> None:
    resp = Deployments.call(model=fine_tuned, capacity=1, suffix=SUFFIX, api_key=alice)
    assert error_of(resp) == (409, "Conflict")
    assert resp.message == f"Model instance {deployed} already exists, please specify a suffix"
    client = dashscope.Client(base_url=server.url + "/api/v1", api_key=alice)
    with client, pytest.raises(APIStatusError) as exc:
        client.deployments.create(model=fine_tuned, capacity=1, suffix=SUFFIX)
    assert exc.value.status_code == 409


def test_another_accounts_deployment_and_model_are_not_found(
    bob: str, fine_tuned: str, deployed: str
) -> None:
    assert error_of(Deployments.get(deployed, api_key=bob)) == (404, "NotFound")
    assert error_of(Deployments.scale(deployed, capacity=2, api_key=bob)) == (404, "NotFound")
    assert error_of(Deployments.delete(deployed, api_key=bob)) == (404, "NotFound")
    assert error_of(Deployments.call(model=fine_tuned, capacity=1, api_key=bob)) == (404, "NotFound")
    assert Deployments.list(api_key=bob).output.deployments == []
    resp = Generation.call(model=deployed, messages=QUESTION, api_key=bob)
    assert (resp.status_code, resp.code) == (404, "NotFound")


def test_bad_parameters_are_invalid_parameter(alice: str, fine_tuned: str, deployed: str) -> None:
    for kw in ({"temperature": 5}, {"result_format": "xml"}, {"max_tokens": 0}):
        resp = Generation.call(model=deployed, messages=QUESTION, api_key=alice, **kw)  # type: ignore[arg-type]
        assert (resp.status_code, resp.code) == (400, "InvalidParameter"), kw
    assert error_of(Deployments.call(model=fine_tuned, capacity=0, api_key=alice)) == (
        400,
        "InvalidParameter",
    )
    bad_suffix = Deployments.call(model=fine_tuned, capacity=1, suffix="Not Lower", api_key=alice)
    assert error_of(bad_suffix) == (400, "InvalidParameter")


def test_generation_needs_a_deployment_of_a_fine_tuned_model_and_an_existing_model(
    alice: str, fine_tuned: str, deployed: str
) -> None:
    undeployed = Generation.call(model=fine_tuned, messages=QUESTION, api_key=alice)
    assert (undeployed.status_code, undeployed.code) == (400, "InvalidParameter")
    assert "not deployed" in undeployed.message
    unknown = Generation.call(model="no-such-model", messages=QUESTION, api_key=alice)
    assert (unknown.status_code, unknown.code) == (404, "NotFound")


def test_2x_client_scales_then_deletes_a_deployment_and_it_is_gone(
    server: LiveServer, alice: str, fine_tuned: str
) -> None:
    with dashscope.Client(base_url=server.url + "/api/v1", api_key=alice) as client:
        made = client.deployments.create(model=fine_tuned, capacity=1, suffix="scaled")
        assert made.deployed_model == f"{fine_tuned}-scaled" and made.model == fine_tuned
        assert client.deployments.scale(made.deployed_model, capacity=3).capacity == 3
        assert client.deployments.get(made.deployed_model).capacity == 3
        assert client.deployments.delete(made.deployed_model).status == "DELETING"
        with pytest.raises(NotFoundError):
            client.deployments.get(made.deployed_model)
        with pytest.raises(BadRequestError):
            client.deployments.scale(fine_tuned + "-" + SUFFIX, capacity=0)
    gone = Generation.call(model=made.deployed_model, messages=QUESTION, api_key=alice)
    assert (gone.status_code, gone.code) == (404, "NotFound")


# ---- generation ------------------------------------------------------------------------------------


def test_fine_tuned_greedy_answer_differs_from_the_base_and_equals_loading_the_adapter_directly(
    server: LiveServer, alice: str, fine_tuned: str, deployed: str
) -> None:
    tuned, base = content(generate(alice, deployed)), content(generate(alice, MODEL))
    assert tuned != base
    base_dir = server.home / "models" / MODEL
    assert tuned == oracle(base_dir, registered_path(server, fine_tuned), QUESTION, GREEDY["max_tokens"])
    assert base == oracle(base_dir, None, QUESTION, GREEDY["max_tokens"])


def test_a_message_answer_carries_finish_reason_and_usage(alice: str, deployed: str) -> None:
    resp = generate(alice, deployed)
    choice = resp.output.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    u = resp.usage
    assert u.input_tokens > 0 and u.output_tokens > 0
    assert u.total_tokens == u.input_tokens + u.output_tokens


def test_a_text_answer_to_a_prompt_is_the_same_as_to_that_user_message(alice: str, deployed: str) -> None:
    question = QUESTION[1]["content"]
    text = generate(alice, deployed, messages=None, prompt=question, result_format="text")
    assert text.output.text == content(generate(alice, deployed, messages=[QUESTION[1]]))
    assert text.output.finish_reason in ("stop", "length") and text.usage.total_tokens > 0


def test_streamed_answers_join_to_the_non_streamed_one_incremental_or_not(alice: str, deployed: str) -> None:
    whole = generate(alice, deployed)
    deltas = list(generate_stream(alice, deployed, incremental_output=True))
    assert "".join(content(c) for c in deltas) == content(whole)
    assert all(c.output.choices[0].finish_reason == "null" for c in deltas[:-1])
    assert deltas[-1].output.choices[0].finish_reason == whole.output.choices[0].finish_reason
    assert deltas[-1].usage.total_tokens == whole.usage.total_tokens
    # incremental_output=False: the SDK asks for deltas itself and hands back the text so far.
    merged = list(generate_stream(alice, deployed, incremental_output=False))
    assert content(merged[-1]) == content(whole)
    text = list(generate_stream(alice, deployed, result_format="text", incremental_output=True))
    assert "".join(c.output.text for c in text) == content(whole)


def generate_stream(key: str, model: str, **kw: Any) -> Iterator[Any]:
    kw.setdefault("result_format", "message")
    for resp in Generation.call(model=model, messages=QUESTION, api_key=key, stream=True, **GREEDY_DS, **kw):
        assert resp.status_code == 200, str(resp)
        yield resp


def test_the_server_streams_dashscope_frames_on_the_sse_header(
    server: LiveServer, alice: str, deployed: str
) -> None:
    body = {"model": deployed, "input": {"messages": QUESTION}, "parameters": GREEDY_DS}
    headers = {"Authorization": f"Bearer {alice}", "X-DashScope-SSE": "enable"}
    r = httpx.post(
        server.url + "/api/v1/services/aigc/text-generation/generation",
        json=body,
        headers=headers,
        timeout=120,
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    blocks = [b.split("\n") for b in r.text.strip().split("\n\n")]
    assert all(
        b[0] == f"id:{i}" and b[1:3] == ["event:result", ":HTTP_STATUS/200"] for i, b in enumerate(blocks, 1)
    )
    assert all(len(b) == 4 and b[3].startswith("data:{") for b in blocks)


def test_2x_client_answers_as_1x_streamed_or_not(server: LiveServer, alice: str, deployed: str) -> None:
    expected = content(generate(alice, deployed))
    with dashscope.Client(base_url=server.url + "/api/v1", api_key=alice) as client:
        r = client.chat.completions.create(model=deployed, messages=QUESTION, **GREEDY_DS)  # type: ignore[arg-type]
        assert r.output_text == expected and r.usage is not None
        chunks = client.chat.completions.create(model=deployed, messages=QUESTION, stream=True, **GREEDY_DS)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected


def test_compatible_mode_answers_in_openais_shape(
    server: LiveServer, alice: str, bob: str, deployed: str
) -> None:
    expected = content(generate(alice, deployed))
    compat = OpenAI(
        base_url=server.url + "/compatible-mode/v1", api_key=alice, _strict_response_validation=True
    )
    r = compat.chat.completions.create(model=deployed, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    assert r.object == "chat.completion" and r.model == deployed
    assert r.choices[0].message.content == expected
    stream = compat.chat.completions.create(model=deployed, messages=QUESTION, stream=True, **GREEDY)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    others = OpenAI(base_url=server.url + "/compatible-mode/v1", api_key=bob, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        others.chat.completions.create(model=deployed, messages=QUESTION)  # type: ignore[arg-type]
    assert exc.value.code == "model_not_found"
