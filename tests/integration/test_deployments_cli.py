"""Deployments from the terminal, and the per-account deployment limit as the OpenAI SDK meets it.

`tunehouse deployments create|delete|list` work on the records; the server loads a deployment on its first
call (`tunehouse chat`, any SDK) and frees the engine of one deleted from the terminal.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.test_openai_sdk import make_client, wait_done

pytestmark = pytest.mark.heavy(3)

MODEL = "tunehouse-tiny"
SECOND_BASE = "tunehouse-tiny-b"  # the same weights under another name: a second model to deploy
QUESTION = "What is 1 plus 2?"
GREEDY = {"temperature": 0, "max_tokens": 8}
LEARN_FAST = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 10}


def engine_processes(home: Path) -> list[int]:
    """Pids of the engine workers a server with this home started (their spec files lie under it). Engines
    are shared per base model: one ends when the last deployment it serves goes."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "tunehouse.serving.worker" in cmdline and f"{home}/" in cmdline:
            pids.append(int(proc.name))
    return pids


def cli_fails(server: LiveServer, *args: str) -> subprocess.CalledProcessError:
    with pytest.raises(subprocess.CalledProcessError) as refused:
        server.cli(*args)
    return refused.value


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("srv-deploy-cli"), "sqlite", tiny_model, make_pg_database)
    srv.cli("models", "add", SECOND_BASE, str(srv.home / "models" / MODEL))
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def ann(server: LiveServer) -> dict[str, str]:
    return server.keys("dep-ann")


@pytest.fixture(scope="module")
def client(server: LiveServer, ann: dict[str, str]) -> OpenAI:
    return make_client(server, ann)


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


def deployments(server: LiveServer, account: str) -> list[dict[str, Any]]:
    return [r for r in json.loads(server.cli("deployments", "list", "--json")) if r["account"] == account]


def cli_chat(server: LiveServer, keys: dict[str, str], model: str) -> str:
    return server.cli(
        "chat",
        model,
        "--url",
        server.url,
        "--api-key",
        keys["api_key"],
        "--message",
        QUESTION,
        "--temperature",
        "0",
        "--max-tokens",
        str(GREEDY["max_tokens"]),
    )


def greedy(client: OpenAI, model: str) -> str:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        **GREEDY,  # type: ignore[arg-type]
    )
    return r.choices[0].message.content or ""


def test_create_deploys_a_fine_tuned_model_for_its_owner_which_tunehouse_chat_then_calls(
    server: LiveServer, ann: dict[str, str], client: OpenAI, fine_tuned: str
) -> None:
    made = json.loads(server.cli("deployments", "create", fine_tuned, "--capacity", "2", "--json"))
    assert (made["account"], made["endpoint"], made["status"], made["capacity"]) == (
        "dep-ann",
        fine_tuned,
        "PENDING",
        2,
    )
    assert cli_chat(server, ann, fine_tuned) == greedy(client, fine_tuned) + "\n"
    # Both calls went to the deployment made in the terminal: no second one was made on first use.
    [row] = [r for r in deployments(server, "dep-ann") if r["endpoint"] == fine_tuned]
    assert (row["deployment"], row["status"], row["capacity"], row["requests"]) == (
        made["deployment"],
        "RUNNING",
        2,
        2,
    )
    server.cli("deployments", "delete", fine_tuned)


def test_delete_of_a_running_deployment_frees_its_engine_and_keeps_the_model(
    server: LiveServer, client: OpenAI, fine_tuned: str
) -> None:
    greedy(client, fine_tuned)  # deployed on first use
    [row] = [r for r in deployments(server, "dep-ann") if r["endpoint"] == fine_tuned]
    assert row["status"] == "RUNNING" and engine_processes(server.home)  # the only deployment now
    gone = json.loads(server.cli("deployments", "delete", fine_tuned, "--json"))
    assert (gone["deployment"], gone["status"]) == (row["deployment"], "DELETED")
    assert fine_tuned not in [r["endpoint"] for r in deployments(server, "dep-ann")]
    wait_for(lambda: not engine_processes(server.home))
    assert fine_tuned in [m.id for m in client.models.list()]


def test_a_checkpoint_id_is_deployed_for_the_run_that_made_it(
    server: LiveServer, client: OpenAI, fine_tuned: str
) -> None:
    checkpoint = next(m.id for m in client.models.list() if m.id.startswith(fine_tuned + ":ckpt-step-"))
    made = json.loads(server.cli("deployments", "create", checkpoint, "--json"))
    assert (made["account"], made["model"], made["base_model"]) == ("dep-ann", checkpoint, MODEL)
    gone = json.loads(server.cli("deployments", "delete", made["deployment"], "--json"))
    assert gone["status"] == "DELETED" and checkpoint not in [
        r["endpoint"] for r in deployments(server, "dep-ann")
    ]


def test_create_refuses_an_unknown_model_a_base_model_without_account_and_a_second_deployment(
    server: LiveServer, ann: dict[str, str]
) -> None:
    assert (
        "no model no-such-model"
        in cli_fails(server, "deployments", "create", "no-such-model", "--account", "dep-ann").stderr
    )
    assert "--account NAME" in cli_fails(server, "deployments", "create", MODEL).stderr
    server.cli("deployments", "create", MODEL, "--account", "dep-ann")
    again = cli_fails(server, "deployments", "create", MODEL, "--account", "dep-ann")
    assert again.returncode == 2 and "already exists" in again.stderr
    server.cli("deployments", "delete", MODEL, "--account", "dep-ann")
    assert (
        "no deployment no-such-deployment"
        in cli_fails(server, "deployments", "delete", "no-such-deployment").stderr
    )


def test_at_the_deployment_limit_a_chat_on_a_new_model_is_429_in_the_openai_sdk(server: LiveServer) -> None:
    keys = server.keys("dep-capped")
    said = json.loads(server.cli("accounts", "limit", "dep-capped", "--max-deployments", "1", "--json"))
    assert said == {"account": "dep-capped", "max_deployments": 1}
    client = make_client(server, keys)
    held = greedy(client, MODEL)  # the one deployment it may hold, made on first use
    with pytest.raises(openai.RateLimitError) as refused:
        greedy(client, SECOND_BASE)
    assert refused.value.status_code == 429
    assert refused.value.code == "rate_limit_exceeded"
    assert "Too many deployments" in refused.value.message
    assert greedy(client, MODEL) == held  # what it holds still answers
    refused_cli = cli_fails(server, "deployments", "create", SECOND_BASE, "--account", "dep-capped")
    assert "Too many deployments" in refused_cli.stderr
    server.cli("deployments", "delete", MODEL, "--account", "dep-capped")
    assert greedy(client, SECOND_BASE) == held  # the same weights under another name, deployed now
    lifted = json.loads(server.cli("accounts", "limit", "dep-capped", "--no-deployment-limit", "--json"))
    assert lifted == {"account": "dep-capped", "max_deployments": None}
    assert greedy(client, MODEL) == held


def test_the_deployment_limit_is_one_account_s_own(server: LiveServer) -> None:
    server.cli("accounts", "limit", "dep-cap-a", "--max-deployments", "1")
    server.cli("keys", "create", "--account", "dep-cap-b")
    for account in ("dep-cap-a", "dep-cap-b"):
        server.cli("deployments", "create", MODEL, "--account", account)
    server.cli("deployments", "create", SECOND_BASE, "--account", "dep-cap-b")
    assert (
        "Too many deployments"
        in cli_fails(server, "deployments", "create", SECOND_BASE, "--account", "dep-cap-a").stderr
    )
