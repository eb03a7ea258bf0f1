"""Using what was trained: the official `openai` SDK fine-tunes tunehouse-tiny, then chats with the result.

The oracle for the fine-tuned model's greedy answer is the adapter loaded with transformers + PEFT directly,
in this test process (tests may import torch; the server never does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl
from tests.integration.test_openai_sdk import make_client, wait_done

pytestmark = pytest.mark.heavy(3)

MODEL = "tunehouse-tiny"
QUESTION = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 1 plus 2?"}]
GREEDY = {"temperature": 0, "max_tokens": 8}
# A high learning rate: the tiny model learns the answers' shape within a few dozen steps.
LEARN_FAST = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    # One backend: what differs per backend (the deployment record) is covered by the unit tests on both.
    srv = start_server(tmp_path_factory.mktemp("srv-chat"), "sqlite", tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> OpenAI:
    return make_client(server, server.keys("chat-alice"))


@pytest.fixture(scope="module")
def fine_tuned(client: OpenAI) -> str:
    f = client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=f.id,
        method={"type": "supervised", "supervised": {"hyperparameters": LEARN_FAST}},  # type: ignore[typeddict-item]
    )
    done = wait_done(client, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model
    return done.fine_tuned_model


def registered_path(server: LiveServer, name: str) -> str:
    rows = json.loads(server.cli("models", "list", "--json"))
    return str(next(r["path"] for r in rows if r["name"] == name))


def oracle(base: Path, adapter: str | None, messages: list[dict[str, str]], max_new_tokens: int) -> str:
    """Greedy generation with transformers (+ PEFT), as a user would load the run's output themselves."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    tok = AutoTokenizer.from_pretrained(adapter or base)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return str(tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def greedy(client: OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    return r.choices[0].message.content or ""


def test_fine_tuned_greedy_answer_differs_from_the_base_and_equals_loading_the_adapter_directly(
    server: LiveServer, client: OpenAI, fine_tuned: str
) -> None:
    tuned, base = greedy(client, fine_tuned), greedy(client, MODEL)
    assert tuned != base
    base_dir = server.home / "models" / MODEL
    assert tuned == oracle(base_dir, registered_path(server, fine_tuned), QUESTION, GREEDY["max_tokens"])
    assert base == oracle(base_dir, None, QUESTION, GREEDY["max_tokens"])


def test_a_completion_is_a_full_chat_completion_with_usage(client: OpenAI, fine_tuned: str) -> None:
    r = client.chat.completions.create(model=fine_tuned, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == fine_tuned
    assert [c.index for c in r.choices] == [0] and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streamed_answer_joins_to_the_non_streamed_one_with_a_final_usage_chunk(
    client: OpenAI, fine_tuned: str
) -> None:
    whole = client.chat.completions.create(model=fine_tuned, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    chunks = list(
        client.chat.completions.create(
            model=fine_tuned,
            messages=QUESTION,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,  # type: ignore[arg-type]
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_models_list_holds_the_base_the_fine_tuned_model_and_its_checkpoints(
    client: OpenAI, fine_tuned: str
) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and fine_tuned in ids
    assert any(i.startswith(fine_tuned + ":ckpt-step-") for i in ids)
    got = client.models.retrieve(fine_tuned)
    assert got.id == fine_tuned and got.object == "model" and got.owned_by.startswith("org-")


def test_a_checkpoint_is_deployed_on_first_use_and_answers(client: OpenAI, fine_tuned: str) -> None:
    ckpt = next(m.id for m in client.models.list() if m.id.startswith(fine_tuned + ":ckpt-step-"))
    assert client.models.retrieve(ckpt).id == ckpt  # raw colons in the path
    r = client.chat.completions.create(model=ckpt, messages=QUESTION, **GREEDY)  # type: ignore[arg-type]
    assert r.model == ckpt and r.usage is not None and r.usage.completion_tokens >= 1


def test_n_choices_and_a_seed_make_sampling_repeatable(client: OpenAI) -> None:
    def sample() -> list[str]:
        r = client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            n=2,
            seed=7,
            temperature=1.0,
            max_tokens=6,  # type: ignore[arg-type]
        )
        return [c.message.content or "" for c in r.choices]

    first = sample()
    assert len(first) == 2 and sample() == first


def test_an_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="ft:nope:org:x:abc", messages=QUESTION)  # type: ignore[arg-type]
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("ft:nope:org:x:abc")
    assert exc.value.code == "model_not_found"


def test_another_accounts_fine_tuned_model_is_404_for_chat_and_retrieve(
    server: LiveServer, fine_tuned: str
) -> None:
    other = make_client(server, server.keys("chat-bob"))
    with pytest.raises(openai.NotFoundError) as exc:
        other.chat.completions.create(model=fine_tuned, messages=QUESTION)  # type: ignore[arg-type]
    assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        other.models.retrieve(fine_tuned)
    assert fine_tuned not in [m.id for m in other.models.list()]


def test_an_invalid_parameter_is_a_bad_request_naming_it(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=5)  # type: ignore[arg-type]
    assert exc.value.param == "temperature"


def test_a_deleted_fine_tuned_model_is_gone_from_list_retrieve_and_chat(server: LiveServer) -> None:
    own = make_client(server, server.keys("chat-deleter"))
    f = own.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune")
    fast = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 3}
    job = own.fine_tuning.jobs.create(
        model=MODEL,
        training_file=f.id,
        method={"type": "supervised", "supervised": {"hyperparameters": fast}},  # type: ignore[typeddict-item]
    )
    done = wait_done(own, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    name = done.fine_tuned_model
    assert name is not None
    deleted = own.models.delete(name)
    assert deleted.id == name and deleted.deleted is True
    assert name not in [m.id for m in own.models.list()]
    for call in (
        lambda: own.models.retrieve(name),
        lambda: own.chat.completions.create(model=name, messages=QUESTION),  # type: ignore[arg-type]
    ):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.code == "model_not_found"


def test_a_base_model_cannot_be_deleted(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.models.delete(MODEL)
    assert client.models.retrieve(MODEL).id == MODEL


def test_cli_chat_streams_the_greedy_answer_and_deployments_list_shows_it_running(server: LiveServer) -> None:
    keys = server.keys("chat-cli")
    question = QUESTION[1]["content"]  # the CLI sends no system prompt
    alone = make_client(server, keys).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        **GREEDY,  # type: ignore[arg-type]
    )
    out = server.cli(
        "chat",
        MODEL,
        "--url",
        server.url,
        "--api-key",
        keys["api_key"],
        "--message",
        question,
        "--temperature",
        "0",
        "--max-tokens",
        str(GREEDY["max_tokens"]),
    )
    assert out == (alone.choices[0].message.content or "") + "\n"
    rows = json.loads(server.cli("deployments", "list", "--json"))
    mine = [r for r in rows if r["account"] == "chat-cli"]
    assert [(r["model"], r["status"], r["engine"], r["requests"]) for r in mine] == [
        (MODEL, "RUNNING", "transformers", 2)
    ]
