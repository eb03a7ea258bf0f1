"""The console's deployments page and playground in a real browser: deploy a run's model, watch its answer
stream in, read the base model's answer beside it, delete it; limits and tenancy as the console shows them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from openai import OpenAI
from playwright.sync_api import expect

from tests.conftest import LiveServer
from tests.e2e.conftest import CHAT_ROWS, ConsoleClient, jsonl, sign_in
from tests.integration.conftest import wait_for
from tests.integration.test_deployments_cli import engine_processes

pytestmark = pytest.mark.heavy(5)

BASE = "tunehouse-tiny"
# As the OpenAI chat tests train: the tiny model learns the answers' shape in a few dozen steps.
LEARN_FAST = {"epochs": 3, "batch_size": 2, "learning_rate": 0.01, "max_seq_len": 128}
PROMPT = "What is 1 plus 2?"
MAX_TOKENS = 40  # enough pieces that a streamed answer arrives over several reads

# Records each change of an answer's text as the page makes it: one entry per mutation callback, so text
# that arrived in one network read (one callback) counts once, however many pieces it held.
WATCH = """(id) => {
  const node = document.getElementById(id);
  window.__seen = [];
  new MutationObserver(() => window.__seen.push(node.textContent)).observe(
    node, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture(scope="module")
def tuned(server: LiveServer, alice: dict[str, str]) -> dict[str, str]:
    """Alice's fine-tuned model, trained through the console's forms."""
    client = ConsoleClient(server.url, alice["api_key"])
    run = client.create_run(client.create_job("playground"), jsonl(CHAT_ROWS), LEARN_FAST)
    assert client.wait_state(run, {"succeeded", "failed", "stopped"}, timeout=600) == "succeeded"
    return {"run": run, "model": f"{BASE}-ft-{run}"}


def api_answer(server: LiveServer, keys: dict[str, str], model: str) -> str:
    """The greedy answer the OpenAI API gives for what the playground sends."""
    sdk = OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"])
    r = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=MAX_TOKENS
    )
    return r.choices[0].message.content or ""


def deployment_row(page: Any, name: str) -> Any:
    return page.locator(f'#deployments tr[data-endpoint="{name}"]')


def wait_running(page: Any, name: str) -> None:
    """Reloads the server-rendered list until the engine has loaded (a deployment loads in the background)."""
    page.goto("/console/deployments")
    deadline = time.monotonic() + 600  # an engine loads in seconds; generous for a loaded machine
    while time.monotonic() < deadline:
        status = deployment_row(page, name).locator("[data-status]").get_attribute("data-status")
        if status == "RUNNING":
            return
        assert status in ("PENDING", "DEPLOYING"), f"{name} is {status}"
        page.wait_for_timeout(500)
        page.reload()
    raise AssertionError(f"{name} did not load")


def ask(page: Any, compare: bool) -> None:
    page.get_by_label("Max new tokens").fill(str(MAX_TOKENS))
    page.get_by_label("Prompt").fill(PROMPT)
    page.get_by_label("Compare with the base model").set_checked(compare)
    page.get_by_role("button", name="Send").click()


@pytest.fixture(scope="module")
def deployed(browser: Any, server: LiveServer, alice: dict[str, str], tuned: dict[str, str]) -> str:
    """The run's model deployed from its run page, loaded."""
    ctx = browser.new_context(base_url=server.url)
    page = ctx.new_page()
    sign_in(page, alice["api_key"])
    page.goto(f"/console/runs/{tuned['run']}")
    page.get_by_role("button", name=f"Deploy {tuned['model']}", exact=True).click()
    expect(page).to_have_url(re.compile(r"/console/playground\?model=" + re.escape(quote(tuned["model"]))))
    wait_running(page, tuned["model"])
    ctx.close()
    return tuned["model"]


def test_a_model_deployed_from_its_run_page_is_listed_with_engine_memory_and_requests(
    new_page: Callable[[], Any], alice: dict, deployed: str
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto("/console/deployments")
    row = deployment_row(page, deployed)
    expect(row.locator("[data-status]")).to_have_text("RUNNING")
    expect(row).to_contain_text("transformers")
    expect(row.locator(".dep-memory")).to_have_text(re.compile(r"\d+(\.\d+)? (MB|GB|MiB|GiB)"))
    expect(row.locator(".dep-requests")).to_contain_text("0 answering, 0 queued")
    page.goto(f"/console/runs/{deployed.rsplit('-ft-', 1)[1]}")
    expect(page.get_by_role("link", name="Open in playground").first).to_be_visible()


def test_the_base_models_answer_is_shown_beside_the_fine_tuned_one(
    new_page: Callable[[], Any],
    server: LiveServer,
    alice: dict,
    deployed: str,
    shots: Callable[[Any, str], Path],
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto(f"/console/playground?model={quote(deployed)}")
    ask(page, compare=True)
    for pane in ("#answer-tuned", "#answer-base"):
        expect(page.locator(pane)).to_have_attribute("data-state", "done", timeout=180_000)
    expect(page.locator("#answer-base-model")).to_have_text(BASE)
    tuned_text = page.locator("#answer-tuned-text").text_content()
    base_text = page.locator("#answer-base-text").text_content()
    assert base_text == api_answer(server, alice, BASE)
    assert tuned_text == api_answer(server, alice, deployed)
    assert tuned_text != base_text
    shots(page, "playground")
    page.goto("/console/deployments")
    expect(deployment_row(page, BASE).locator("[data-status]")).to_have_text("RUNNING")
    shots(page, "deployments")


def test_a_streamed_answer_appears_piece_by_piece_and_equals_the_api_answer(
    new_page: Callable[[], Any], server: LiveServer, alice: dict, deployed: str
) -> None:
    # The base model (deployed beside the fine-tuned one above) writes a long answer; the fine-tuned one
    # learned to answer in two tokens.
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto(f"/console/playground?model={BASE}")
    expect(page.get_by_label("Deployed model")).to_have_value(BASE)
    page.evaluate(WATCH, "answer-tuned-text")
    ask(page, compare=False)
    expect(page.locator("#answer-tuned")).to_have_attribute("data-state", "done", timeout=120_000)
    expect(page.locator("#answer-base")).to_be_hidden()
    seen = [s for s in page.evaluate("window.__seen") if s]
    final = page.locator("#answer-tuned-text").text_content()
    # The text grew over several separate reads of the stream, each extending the one before.
    assert len(seen) >= 3, seen
    assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(seen, seen[1:], strict=False)), seen
    assert seen[-1] == final
    assert int(page.locator("#answer-tuned-text").get_attribute("data-pieces") or 0) >= len(seen)
    assert final == api_answer(server, alice, BASE)


def stop_the_bases_share(page: Any, server: LiveServer) -> None:
    """The base model, when the comparisons deployed it, is served by the fine-tuned model's engine process:
    stopping it alone frees only its share, and the process goes on serving the other."""
    row = deployment_row(page, BASE)
    if row.count() and row.locator("[data-status]").get_attribute("data-status") == "RUNNING":
        page.get_by_role("button", name=f"Stop {BASE}", exact=True).click()
        expect(deployment_row(page, BASE).locator("[data-status]")).to_have_text("STOPPED")
        assert engine_processes(server.home)


def test_stop_frees_the_engine_and_start_loads_it_again(
    new_page: Callable[[], Any], server: LiveServer, alice: dict, deployed: str
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto("/console/deployments")
    stop_the_bases_share(page, server)
    page.get_by_role("button", name=f"Stop {deployed}", exact=True).click()
    expect(deployment_row(page, deployed).locator("[data-status]")).to_have_text("STOPPED")
    expect(deployment_row(page, deployed).locator(".dep-memory")).to_have_text("—")
    wait_for(lambda: not engine_processes(server.home))  # its last deployment stopped: the process ends
    page.get_by_role("button", name=f"Start {deployed}", exact=True).click()
    wait_running(page, deployed)


def test_another_account_neither_sees_nor_calls_alices_deployment(
    new_page: Callable[[], Any], server: LiveServer, bob: dict, deployed: str
) -> None:
    page = new_page()
    sign_in(page, bob["api_key"])
    page.goto("/console/deployments")
    expect(page.locator(f'tr[data-endpoint="{deployed}"]')).to_have_count(0)
    bob_console = ConsoleClient(server.url, bob["api_key"])
    r = bob_console.http.post(
        "/console/playground/chat",
        json={"model": deployed, "prompt": PROMPT},
        headers={"X-CSRF-Token": bob_console.csrf},
    )
    assert r.status_code == 404
    refused = bob_console.post(f"/console/deployments/{quote(deployed, safe='')}/delete", {})
    assert refused.status_code == 404


def test_the_playground_refuses_a_chat_without_the_csrf_token(server: LiveServer, alice: dict) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    r = client.http.post("/console/playground/chat", json={"model": BASE, "prompt": PROMPT})
    assert r.status_code == 403


def test_at_the_deployment_limit_the_console_refuses_another_deploy_with_the_reason(
    new_page: Callable[[], Any], server: LiveServer
) -> None:
    keys = server.keys("carol")
    server.cli("accounts", "limit", "carol", "--max-deployments", "1")
    server.cli("deployments", "create", BASE, "--account", "carol")  # held, not loaded until called
    server.cli("models", "add", "tunehouse-tiny-b", str(server.home / "models" / BASE))
    page = new_page()
    sign_in(page, keys["api_key"])
    page.goto("/console/deployments")
    page.get_by_label("Model or checkpoint").select_option("tunehouse-tiny-b")

    def deploy_post(r: Any) -> bool:
        return bool(r.url.endswith("/console/deployments") and r.request.method == "POST")

    with page.expect_response(deploy_post) as res:
        page.get_by_role("button", name="Deploy", exact=True).click()
    assert res.value.status == 429
    expect(page.get_by_role("alert")).to_contain_text("Too many deployments")
    expect(page.locator("#deployments tbody tr")).to_have_count(1)


def test_deleting_a_deployment_removes_it_and_frees_its_engine(
    new_page: Callable[[], Any], server: LiveServer, alice: dict, deployed: str
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto("/console/deployments")
    stop_the_bases_share(page, server)
    page.get_by_role("button", name=f"Delete {deployed}", exact=True).click()
    expect(page).to_have_url(re.compile(r"/console/deployments$"))
    expect(deployment_row(page, deployed)).to_have_count(0)
    wait_for(lambda: not engine_processes(server.home))  # its last deployment went: the process ends
    # The model itself stays: the playground can deploy it again.
    sdk = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {alice['api_key']}"})
    assert deployed in [m["id"] for m in sdk.json()["data"]]
