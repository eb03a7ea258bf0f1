"""The web console as a team uses it: in a real browser, against a live server that really trains."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import LiveServer
from tests.e2e.conftest import BAD_ROWS_TEXT, CHAT_ROWS, ConsoleClient, jsonl, sign_in
from tests.families import SYSTEM_THREE_TURNS

pytestmark = pytest.mark.heavy(5)

GOOD = jsonl(CHAT_ROWS)
# Long enough to watch (hundreds of steps at batch 1); it is stopped well before the end.
LONG = {"epochs": 50, "batch_size": 1, "learning_rate": 0.003, "max_seq_len": 128}
SHORT = {"epochs": 2, "batch_size": 4, "learning_rate": 0.003, "max_seq_len": 128}


def choose_file(page: Any, label: str, name: str, text: str) -> None:
    page.get_by_label(label).set_input_files(
        files=[{"name": name, "mimeType": "application/jsonl", "buffer": text.encode()}]
    )


def loss_points(page: Any) -> int:
    return int(page.locator("#chart-loss").get_attribute("data-points") or 0)


def wait_for_loss_points(page: Any, more_than: int, timeout: float = 30) -> int:
    """Polled from the test: the page's CSP (rightly) refuses the string evaluation wait_for_function uses."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = loss_points(page)
        if n > more_than:
            return n
        page.wait_for_timeout(200)
    raise AssertionError(f"the loss chart stayed at {loss_points(page)} points")


@pytest.fixture(scope="module")
def finished_run(server: LiveServer, alice: dict[str, str]) -> dict[str, str]:
    """Alice's short run, trained to the end through the console's forms."""
    client = ConsoleClient(server.url, alice["api_key"])
    job = client.create_job("nightly-eval")
    run = client.create_run(job, GOOD, SHORT, split_ratio=20)
    assert client.wait_state(run, {"succeeded", "failed", "stopped"}) == "succeeded"
    return {"job": job, "run": run}


@pytest.fixture(scope="module")
def continued_run(server: LiveServer, alice: dict[str, str], finished_run: dict[str, str]) -> str:
    """A second run that continues training alice's fine-tuned model."""
    client = ConsoleClient(server.url, alice["api_key"])
    parent = f"tunehouse-tiny-ft-{finished_run['run']}"
    run = client.create_run(client.create_job("nightly-eval-2"), GOOD, {**SHORT, "epochs": 1}, model=parent)
    assert client.wait_state(run, {"succeeded", "failed", "stopped"}) == "succeeded"
    return run


# ---- signing in ------------------------------------------------------------------------------------


def test_console_pages_send_a_visitor_to_sign_in_and_back(new_page: Callable[[], Any], alice: dict) -> None:
    page = new_page()
    page.goto("/console/files")
    expect(page).to_have_url(re.compile(r"/console/login\?next=/console/files$"))
    page.get_by_label("API key").fill(alice["api_key"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/files$"))
    expect(page.get_by_role("heading", name="Files", exact=True)).to_be_visible()


def test_a_wrong_api_key_is_refused_with_a_message(new_page: Callable[[], Any]) -> None:
    page = new_page()
    page.goto("/console/login")
    page.get_by_label("API key").fill("th-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.goto("/console/jobs")
    expect(page).to_have_url(re.compile(r"/console/login"))


def test_the_session_cookie_is_http_only(new_page: Callable[[], Any], alice: dict) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["tunehouse_console"]["httpOnly"] is True
    assert page.evaluate("document.cookie") == ""


def test_a_form_post_without_the_csrf_token_is_refused(new_page: Callable[[], Any], alice: dict) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    # The signed-in browser's cookie goes along; only the token is missing, as in a cross-site post.
    r = page.request.post("/console/jobs", form={"name": "forged-job"}, max_redirects=0)
    assert r.status == 403
    page.goto("/console/jobs?q=forged-job")
    expect(page.locator("#jobs-count")).to_have_text(re.compile(r"^0 jobs"))


def test_the_site_root_leads_to_the_console(new_page: Callable[[], Any]) -> None:
    page = new_page()
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/console/login$"))


# ---- files -----------------------------------------------------------------------------------------


def test_a_bad_dataset_shows_line_level_errors_and_is_not_stored(
    new_page: Callable[[], Any], alice: dict, shots: Callable[[Any, str], Path]
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto("/console/files")
    choose_file(page, "JSONL file", "broken.jsonl", BAD_ROWS_TEXT)
    report = page.locator("#file-report")
    expect(report).to_contain_text("Line 2 · json: invalid JSON")
    expect(report).to_contain_text("Line 3 · messages[1].content")
    expect(report).to_contain_text("Line 4 · messages[0].role: must be one of system, user, assistant")
    shots(page, "files-bad-dataset")
    # The browser refuses to submit the invalid choice, so nothing reaches the server.
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/console/files$"))
    expect(page.get_by_role("link", name="broken.jsonl")).to_have_count(0)


def test_the_server_also_refuses_a_bad_dataset_with_its_line_errors(server: LiveServer, alice: dict) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    r = client.post("/console/files", {}, files={"file": ("broken.jsonl", BAD_ROWS_TEXT.encode())})
    assert r.status_code == 400
    assert "Line 2" in r.text and "invalid JSON" in r.text


def test_a_good_dataset_is_validated_then_uploaded(new_page: Callable[[], Any], alice: dict) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto("/console/files")
    choose_file(page, "JSONL file", "arithmetic.jsonl", GOOD)
    expect(page.locator("#file-report")).to_contain_text("valid — 16 rows, format chat")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_have_text("File uploaded and validated.")
    row = page.locator("#files-table tr", has=page.get_by_role("link", name="arithmetic.jsonl"))
    expect(row).to_contain_text("chat")
    expect(row).to_contain_text("16")


# ---- jobs ------------------------------------------------------------------------------------------


def test_the_job_list_is_searchable_and_paginated(
    new_page: Callable[[], Any], server: LiveServer, shots: Callable[[Any, str], Path]
) -> None:
    keys = server.keys("pager")
    client = ConsoleClient(server.url, keys["api_key"])
    for i in range(23):
        client.create_job(f"sweep-{i:02d}")
    client.create_job("summarizer")
    page = new_page()
    sign_in(page, keys["api_key"])
    expect(page.locator("#jobs-count")).to_have_text("24 jobs")
    expect(page.get_by_text("Page 1 of 2")).to_be_visible()
    expect(page.locator("table.data tbody tr")).to_have_count(20)
    page.get_by_role("link", name="Next →").click()
    expect(page.locator("table.data tbody tr")).to_have_count(4)
    page.get_by_label("Search jobs").fill("summar")
    page.get_by_label("Search jobs").press("Enter")
    expect(page.locator("#jobs-count")).to_contain_text("1 job matching")
    expect(page.get_by_role("link", name="summarizer")).to_be_visible()


def test_an_invalid_job_name_is_explained_next_to_the_field(new_page: Callable[[], Any], alice: dict) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.get_by_label("Name").fill("x")
    # minlength would stop the browser; remove it to see the server's own rule.
    page.evaluate("document.getElementById('job-name').removeAttribute('minlength')")
    page.get_by_role("button", name="Create job").click()
    expect(page.locator("#err-name")).to_contain_text("name length must be within [2, 20]")
    expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")


# ---- new run form ----------------------------------------------------------------------------------


def test_the_new_run_form_offers_the_models_ranges_and_defaults(
    new_page: Callable[[], Any], alice: dict
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.get_by_label("Name").fill("form-check")
    page.get_by_role("button", name="Create job").click()
    page.get_by_role("link", name="New run").click()
    lr = page.get_by_label("learning_rate")
    expect(lr).to_have_attribute("min", "1e-06")
    expect(lr).to_have_attribute("max", "0.01")
    expect(lr).to_have_attribute("placeholder", "0.001")
    expect(page.locator("#hp-max_seq_len option")).to_have_text(
        ["default (512)", "128", "256", "512", "1024"]
    )
    expect(page.get_by_label("lora_rank")).to_be_visible()
    expect(page.locator("#hp-lr_scheduler_type option")).to_have_text(
        ["default (linear)", "linear", "cosine", "constant"]
    )
    expect(page.get_by_label("lora_target_modules")).to_have_attribute("placeholder", "all-linear")
    page.get_by_role("radio", name="Full fine-tuning").check()
    expect(page.get_by_label("lora_rank")).to_have_count(0)
    expect(page.get_by_label("lora_target_modules")).to_have_count(0)
    checkpointing = page.locator("#hp-gradient_checkpointing option")
    expect(checkpointing).to_have_text(["default (false)", "false", "true"])
    page.get_by_role("radio", name="DPO (preferences)").check()
    expect(page.get_by_label("dpo_beta")).to_be_visible()


def test_trainer_knobs_chosen_in_the_form_become_the_runs_settings(
    new_page: Callable[[], Any], alice: dict
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.get_by_label("Name").fill("knobs")
    page.get_by_role("button", name="Create job").click()
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Model", exact=True).select_option("tunehouse-tiny")
    page.get_by_role("radio", name="LoRA").check()
    choose_file(page, "Or upload JSONL files", "arithmetic.jsonl", GOOD)
    expect(page.locator("#upload-report")).to_contain_text("valid — 16 rows")
    page.get_by_label("lr_scheduler_type").select_option("cosine")
    page.get_by_label("gradient_checkpointing").select_option("true")
    page.get_by_label("merge_adapter").select_option("true")
    page.get_by_label("lora_target_modules").fill("q_proj, v_proj")
    page.get_by_role("button", name="Create run").click()
    expect(page).to_have_url(re.compile(r"/console/runs/[a-z0-9]{12}$"))
    page.locator("summary", has_text="Hyperparameters").click()
    for key, shown in [
        ("lr_scheduler_type", "cosine"),
        ("gradient_checkpointing", "true"),
        ("merge_adapter", "true"),
        ("lora_target_modules", "q_proj, v_proj"),
    ]:
        expect(page.get_by_role("row", name=re.compile(f"^{key} "))).to_contain_text(shown)


def test_the_new_run_form_blocks_a_bad_upload_before_submission(
    new_page: Callable[[], Any], alice: dict, shots: Callable[[Any, str], Path]
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.get_by_label("Name").fill("bad-data")
    page.get_by_role("button", name="Create job").click()
    page.get_by_role("link", name="New run").click()
    new_run_url = page.url
    choose_file(page, "Or upload JSONL files", "broken.jsonl", BAD_ROWS_TEXT)
    expect(page.locator("#upload-report")).to_contain_text("Line 2 · json: invalid JSON")
    expect(page.get_by_label("Or upload JSONL files")).to_have_attribute("aria-invalid", "true")
    shots(page, "new-run-bad-dataset")
    page.get_by_role("button", name="Create run").click()
    page.wait_for_timeout(500)
    assert page.url == new_run_url
    page.get_by_role("link", name="bad-data").click()
    expect(page.get_by_text("No runs yet.")).to_be_visible()


def test_ticking_a_chat_file_previews_what_the_run_trains_on(
    server: LiveServer, new_page: Callable[[], Any], alice: dict, shots: Callable[[Any, str], Path]
) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    rows = [{"messages": SYSTEM_THREE_TURNS}, *CHAT_ROWS[:3]]
    r = client.post("/console/files", {}, files={"file": ("support-chats.jsonl", jsonl(rows).encode())})
    assert r.status_code == 303, r.text
    job = client.create_job("preview-check")
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto(f"/console/jobs/{job}/runs/new")
    expect(page.locator("#data-preview")).to_be_hidden()
    page.get_by_role("checkbox", name=re.compile(r"^support-chats\.jsonl")).check()
    replies = [m["content"] for m in SYSTEM_THREE_TURNS if m["role"] == "assistant"]
    expect(page.locator("#preview-rendering mark.trained")).to_have_text(
        [f"{r}<|im_end|>" for r in replies], timeout=60_000
    )
    expect(page.locator("#preview-rendering")).to_contain_text(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>"
    )
    expect(page.locator("#preview-count")).to_have_text(re.compile(r"^\d+ of \d+ tokens trained$"))
    expect(page.locator("#data-preview")).to_contain_text("highlighted = trained")
    shots(page, "new-run-preview")

    # A file chosen for upload is previewed from its first line, before it is sent.
    choose_file(page, "Or upload JSONL files", "fresh.jsonl", GOOD)
    expect(page.locator("#preview-rendering mark.trained")).to_have_text(["0.<|im_end|>"], timeout=60_000)
    expect(page.locator("#data-preview")).to_contain_text("fresh.jsonl")
    bad_first_line = jsonl([{"messages": [{"role": "wizard", "content": "x"}]}])
    choose_file(page, "Or upload JSONL files", "odd.jsonl", bad_first_line)
    expect(page.locator("#data-preview div.error")).to_contain_text("line 1", timeout=60_000)


def test_a_preview_of_another_accounts_file_is_not_found(server: LiveServer, alice: dict, bob: dict) -> None:
    up = httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {alice['api_key']}"},
        files={"file": ("mine.jsonl", GOOD.encode())},
        data={"purpose": "fine-tune"},
    )
    assert up.status_code == 200, up.text
    r = ConsoleClient(server.url, bob["api_key"]).post(
        "/console/preview", {"model": "tunehouse-tiny", "file": up.json()["id"]}
    )
    assert r.status_code == 404 and "No such file" in r.json()["error"]


def test_a_fine_tuned_model_is_previewed_with_its_own_tokenizer(
    server: LiveServer, alice: dict, finished_run: dict[str, str]
) -> None:
    r = ConsoleClient(server.url, alice["api_key"]).post(
        "/console/preview",
        {
            "model": f"tunehouse-tiny-ft-{finished_run['run']}",
            "line": json.dumps({"messages": SYSTEM_THREE_TURNS}),
        },
    )
    assert r.status_code == 200, r.text
    trained = [s["text"] for s in r.json()["segments"] if s["trained"]]
    assert trained == [f"{m['content']}<|im_end|>" for m in SYSTEM_THREE_TURNS if m["role"] == "assistant"]


def test_an_out_of_range_hyperparameter_is_reported_by_the_server(
    new_page: Callable[[], Any], alice: dict
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.get_by_label("Name").fill("hp-check")
    page.get_by_role("button", name="Create job").click()
    page.get_by_role("link", name="New run").click()
    choose_file(page, "Or upload JSONL files", "arithmetic.jsonl", GOOD)
    expect(page.locator("#upload-report")).to_contain_text("valid — 16 rows")
    page.evaluate("document.getElementById('hp-learning_rate').removeAttribute('max')")
    page.get_by_label("learning_rate").fill("0.5")
    page.get_by_role("button", name="Create run").click()
    expect(page.locator("#form-errors")).to_contain_text("learning_rate: must be within [1e-06, 0.01]")
    expect(page.locator("#err-learning_rate")).to_be_visible()


# ---- the run page ----------------------------------------------------------------------------------


def test_a_run_trains_live_then_stops_with_a_checkpoint(
    new_page: Callable[[], Any], alice: dict, shots: Callable[[Any, str], Path]
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.get_by_label("Name").fill("support-bot")
    page.get_by_label("Description").fill("Answers arithmetic questions tersely.")
    page.get_by_role("button", name="Create job").click()
    page.get_by_role("link", name="New run").click()
    page.get_by_label("Model", exact=True).select_option("tunehouse-tiny")
    page.get_by_role("radio", name="LoRA").check()
    page.get_by_role("radio", name="SFT (supervised)").check()
    choose_file(page, "Or upload JSONL files", "arithmetic.jsonl", GOOD)
    expect(page.locator("#upload-report")).to_contain_text("valid — 16 rows, format chat")
    for key, value in LONG.items():
        field = page.get_by_label(key, exact=True)
        if key == "max_seq_len":
            field.select_option(str(value))
        else:
            field.fill(str(value))
    page.get_by_label("Hold out for validation (%)").fill("20")
    shots(page, "new-run")
    page.get_by_role("button", name="Create run").click()

    # The run page lives at the URL every API's vdlLink points to.
    expect(page).to_have_url(re.compile(r"/console/runs/[a-z0-9]{12}$"))
    page.evaluate("window.__sameDocument = true")
    seen = wait_for_loss_points(page, 4, timeout=90)
    wait_for_loss_points(page, seen)
    # The points arrived over server-sent events: the page was never reloaded.
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#chart-loss canvas").first).to_be_visible()
    expect(page.locator("#run-state")).to_have_text("running")
    assert int(page.locator("#run-total").inner_text()) > int(page.locator("#run-step").inner_text()) > 0
    assert page.locator("#run-tps").inner_text() != "—"
    assert page.locator("#run-eta").inner_text() != "—"

    # A reload keeps the curve: the points so far are rendered into the page, then the stream resumes.
    before = loss_points(page)
    page.reload()
    assert loss_points(page) >= before
    wait_for_loss_points(page, before)
    shots(page, "run-live")

    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status")).to_contain_text("Stop requested")
    expect(page.locator("#run-state")).to_have_text("stopped", timeout=60_000)
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    checkpoint = page.locator("#checkpoints tbody tr")
    expect(checkpoint).to_have_count(1)
    expect(checkpoint).to_contain_text("train_loss")
    expect(page.locator("#event-log")).to_contain_text("checkpoint at step")
    expect(page.locator("#event-log")).to_contain_text("state → stopped")
    expect(page.locator("#live-note")).to_have_text("The run has ended.")
    shots(page, "run-stopped")


def test_a_run_can_be_paused_and_resumed(
    server: LiveServer, new_page: Callable[[], Any], alice: dict
) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    run = client.create_run(client.create_job("pausable"), GOOD, LONG)
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto(f"/console/runs/{run}")
    expect(page.locator("#run-state")).to_have_text("running", timeout=60_000)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#run-state")).to_have_text("paused", timeout=60_000)
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#run-state")).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#run-state")).to_have_text("stopped", timeout=60_000)


def test_a_finished_run_shows_its_output_model_and_results(
    new_page: Callable[[], Any], alice: dict, finished_run: dict[str, str]
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    page.goto(f"/console/runs/{finished_run['run']}")
    expect(page.locator("#run-state")).to_have_text("succeeded")
    expect(page.locator("#run-progress")).to_have_attribute("value", re.compile(r"^[1-9]"))
    output = page.locator("#output-model")
    expect(output).to_contain_text(f"tunehouse-tiny-ft-{finished_run['run']}")
    expect(output).to_contain_text("lora_adapter")
    assert loss_points(page) > 0
    expect(page.locator("#run-eval-loss")).not_to_have_text("—")
    expect(page.get_by_role("link", name="results CSV")).to_be_visible()
    page.get_by_role("link", name=f"tunehouse-tiny-ft-{finished_run['run']}").click()
    expect(page).to_have_url(re.compile(r"/console/models#model-"))


def test_the_models_page_traces_a_continued_model_back_to_its_base(
    new_page: Callable[[], Any],
    alice: dict,
    finished_run: dict[str, str],
    continued_run: str,
    shots: Callable[[Any, str], Path],
) -> None:
    page = new_page()
    sign_in(page, alice["api_key"])
    shots(page, "jobs")
    page.get_by_role("link", name="Models").click()
    child, parent = f"tunehouse-tiny-ft-{continued_run}", f"tunehouse-tiny-ft-{finished_run['run']}"
    lineage = page.get_by_role("list", name=f"Lineage of {child}, newest first")
    expect(lineage.get_by_role("listitem")).to_have_text(
        [
            child,
            re.compile(f"run {continued_run}"),
            parent,
            re.compile(f"run {finished_run['run']}"),
            "base tunehouse-tiny",
        ]
    )
    shots(page, "models")


# ---- accounts --------------------------------------------------------------------------------------


def test_another_account_sees_none_of_alices_records(
    new_page: Callable[[], Any], bob: dict, finished_run: dict[str, str]
) -> None:
    page = new_page()
    sign_in(page, bob["api_key"])
    expect(page.locator("#jobs-count")).to_have_text("0 jobs")
    page.goto("/console/files")
    expect(page.get_by_text("No files yet.")).to_be_visible()
    page.goto("/console/models")
    expect(page.get_by_text("None yet")).to_be_visible()
    response = page.goto(f"/console/runs/{finished_run['run']}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("alert")).to_have_text("No such run.")
    response = page.goto(f"/console/jobs/{finished_run['job']}")
    assert response is not None and response.status == 404
    stream = page.request.get(f"/console/runs/{finished_run['run']}/stream")
    assert stream.status == 404


def test_api_keys_are_created_once_visible_and_revoking_ends_their_sessions(
    server: LiveServer, new_page: Callable[[], Any], shots: Callable[[Any, str], Path]
) -> None:
    carol = server.keys("carol")
    admin = new_page()
    sign_in(admin, carol["api_key"])
    admin.goto("/console/keys")
    admin.get_by_label("Label").fill("laptop")
    admin.get_by_role("button", name="Create key").click()
    new_key = admin.locator("#new-api-key").inner_text()
    assert new_key.startswith("th-")
    shots(admin, "api-keys")

    # The new key signs in like any other key of the account.
    other = new_page()
    sign_in(other, new_key)
    expect(other.locator(".account")).to_contain_text("carol")

    admin.goto("/console/keys")
    expect(admin.locator("#new-api-key")).to_have_count(0)  # shown once only
    admin.get_by_role("button", name="Revoke API key laptop").click()
    expect(admin.get_by_role("status")).to_have_text("Key revoked.")
    other.goto("/console/jobs")
    expect(other).to_have_url(re.compile(r"/console/login"))
    with pytest.raises(AssertionError):
        ConsoleClient(server.url, new_key)  # a revoked key no longer signs in


# ---- last: registers a base model every later page would list -------------------------------------


def test_a_preview_on_a_model_registered_to_refuse_a_default_template_says_so(
    server: LiveServer, alice: dict, tiny_model: Path, tmp_path: Path
) -> None:
    base = tmp_path / "tiny-base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    (base / "chat_template.jinja").unlink(missing_ok=True)
    server.cli("models", "add", "tiny-base", str(base), "--chat-template-fallback", "refuse")
    r = ConsoleClient(server.url, alice["api_key"]).post(
        "/console/preview", {"model": "tiny-base", "line": GOOD.splitlines()[0]}
    )
    assert r.status_code == 400
    assert "no chat template" in r.json()["error"]


# ---- platform rules, as the console shows them -------------------------------------------------------


def _run_form(client: ConsoleClient, job: str, file_key: str, **fields: str) -> httpx.Response:
    data = {"model": "tunehouse-tiny", "method": "lora", "train_mode": "sft", "split_ratio": "0"}
    data.update({f"hp.{k}": str(v) for k, v in LONG.items()})
    return client.post(f"/console/jobs/{job}/runs", {**data, "datasets": file_key, **fields})


def _api_file(server: LiveServer, api_key: str, rows: str) -> str:
    r = httpx.post(
        server.url + "/v1/files",
        headers={"Authorization": f"Bearer {api_key}"},
        files={"file": ("rules.jsonl", rows.encode())},
        data={"purpose": "fine-tune"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["id"]).removeprefix("file-")


def test_an_output_name_that_is_a_base_models_name_is_explained_on_the_form(
    server: LiveServer, alice: dict
) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    job = client.create_job("name-clash")
    r = _run_form(client, job, _api_file(server, alice["api_key"], GOOD), output_name="tunehouse-tiny")
    assert r.status_code == 400
    assert 'id="err-output_name"' in r.text and "Model name tunehouse-tiny already exists" in r.text


def test_an_output_name_a_dashscope_job_holds_cannot_be_taken_in_the_console(
    server: LiveServer, alice: dict
) -> None:
    file_key = _api_file(server, alice["api_key"], GOOD)
    name = f"held-{file_key}"
    body = {
        "model": "tunehouse-tiny",
        "training_file_ids": [f"file-{file_key}"],
        "model_name": name,
        "hyper_parameters": {"n_epochs": 50, "batch_size": 1, "max_length": 128},
    }
    headers = {"Authorization": f"Bearer {alice['api_key']}"}
    created = httpx.post(server.url + "/api/v1/fine-tunes", json=body, headers=headers, timeout=60)
    assert created.status_code == 200, created.text
    job_id = created.json()["output"]["job_id"]
    try:
        client = ConsoleClient(server.url, alice["api_key"])
        r = _run_form(client, client.create_job("name-held"), file_key, output_name=name)
        assert r.status_code == 400 and f"Model name {name} already exists" in r.text
    finally:
        httpx.post(f"{server.url}/api/v1/fine-tunes/{job_id}/cancel", headers=headers, timeout=60)


def test_a_file_a_live_run_trains_on_cannot_be_deleted_until_the_run_ends(
    server: LiveServer, alice: dict
) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    file_key = _api_file(server, alice["api_key"], GOOD)
    created = _run_form(client, client.create_job("keeps-its-file"), file_key)
    assert created.status_code == 303, created.text
    run = created.headers["location"].rsplit("/", 1)[1]

    refused = client.post(f"/console/files/{file_key}/delete", {})
    assert refused.status_code == 409
    assert "used by runs that have not ended" in refused.text and run in refused.text
    assert client.http.get(f"/console/files/{file_key}/content").status_code == 200

    assert client.post(f"/console/runs/{run}/stop", {}).status_code == 303
    assert client.wait_state(run, {"stopped"}) == "stopped"
    deleted = client.post(f"/console/files/{file_key}/delete", {})
    assert deleted.status_code == 303 and deleted.headers["location"].endswith("done=file-deleted")


def test_a_run_on_too_few_examples_fails_at_once_with_the_reason(server: LiveServer, alice: dict) -> None:
    client = ConsoleClient(server.url, alice["api_key"])
    run = client.create_run(client.create_job("too-few"), jsonl(CHAT_ROWS[:7]), SHORT)
    assert client.wait_state(run, {"failed", "succeeded", "stopped"}) == "failed"
    page = client.http.get(f"/console/runs/{run}").text
    assert "Training file has 7 example(s), but must have at least 10 examples" in page
