"""The Ray executor on a real local cluster (a head and a second node), through the real SDKs.

The cluster, a Tunehouse server on SQLite with TUNEHOUSE_EXECUTOR=ray and the SDK clients all live in one
network namespace with only `lo` up (tests/integration/ray_cluster.py). One cluster and one server serve the
whole module: a Ray head takes ~20 s to start.
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.conftest import LiveServer
from tests.integration.conftest import CHAT_ROWS, jsonl, wait_for
from tests.integration.http_helpers import console_client
from tests.integration.ray_cluster import RayCluster, is_loopback, netns_usable, ray_cluster
from tests.s3server import BUCKET, SeaweedS3

pytestmark = [pytest.mark.ray, pytest.mark.heavy(10)]

MODEL = "tunehouse-tiny"
STEP_DELAY_S = "0.4"  # makes each step long enough to stop, pause or crash the server mid-run
TERMINAL = {"succeeded", "failed", "cancelled"}
# What a job's env_vars may hold: settings the trainer reads, none of them secret.
ALLOWED_JOB_ENV = {
    "PYTHONUNBUFFERED",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
    "RAY_JOB_STOP_WAIT_TIME_S",
    "TUNEHOUSE_REPORT_DEVICES",
    "GLOO_SOCKET_IFNAME",
}


@dataclass
class Stack:
    cluster: RayCluster
    server: LiveServer
    keys: dict[str, str]
    s3: SeaweedS3

    def client(self, strict: bool = True) -> OpenAI:
        return OpenAI(
            base_url=self.server.url + "/v1", api_key=self.keys["api_key"], _strict_response_validation=strict
        )

    def jobs(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.cluster.jobs_address)


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    why = netns_usable()
    if why is not None:
        pytest.skip(why)
    with ray_cluster() as cluster, cluster.ns.entered():
        # The bucket first: the nodes carry its credentials, as a real cluster's nodes would.
        s3 = SeaweedS3(cluster.temp_dir.parent / "s3")
        s3.start()
        cluster.node_env = s3.env
        cluster.start_head(cpus=2)
        # The second node joins while the server starts (threads started here share the namespace).
        joining = ThreadPoolExecutor(max_workers=1).submit(cluster.add_node, "node2", 1)
        home = tmp_path_factory.mktemp("ray-srv") / "home"
        (home / "models").mkdir(parents=True)
        shutil.copytree(tiny_model, home / "models" / MODEL)
        server = LiveServer(
            home=home,
            database_url=f"sqlite:///{home / 'tunehouse.db'}",
            extra_env={
                "TUNEHOUSE_EXECUTOR": "ray",
                "TUNEHOUSE_RAY_ADDRESS": cluster.jobs_address,
                "TUNEHOUSE_TEST_STEP_DELAY": STEP_DELAY_S,
                # A secret in the server's environment that must never reach a job's runtime_env.
                "AWS_SECRET_ACCESS_KEY": "do-not-ship-me",
                # A run of two GPUs trains on two CPU workers here, each on a node of its own.
                "TUNEHOUSE_CPU_RANKS": "2",
                "TUNEHOUSE_RAY_PLACEMENT": "spread",
                "GLOO_SOCKET_IFNAME": "lo",
                # Short, so that a run whose workers cannot be placed fails within the test's patience.
                "TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S": "15",
                "TUNEHOUSE_RAY_PLACEMENT_RETRIES": "1",
            },
        )
        server.start()
        joining.result()
        cluster.wait_for_nodes(2)
        try:
            yield Stack(cluster, server, server.keys("alice"), s3)
        finally:
            server.stop()
            s3.stop()


@pytest.fixture(scope="module")
def chat_file(stack: Stack) -> str:
    return stack.client().files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id


def sft(epochs: int, batch_size: int) -> Any:
    hp = {"n_epochs": epochs, "batch_size": batch_size, "learning_rate_multiplier": 3}
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def run_key(job_id: str) -> str:
    return job_id.removeprefix("ftjob-")


def wait_done(client: OpenAI, job_id: str, seen: list[str] | None = None, timeout: float = 300) -> Any:
    def check() -> Any:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if seen is not None and (not seen or seen[-1] != job.status):
            seen.append(job.status)
        return job if job.status in TERMINAL else None

    return wait_for(check, timeout=timeout)


def wait_step(client: OpenAI, job_id: str, at_least: int) -> int:
    """Until the trainer has reported a metrics event for a step >= at_least; the latest step."""

    def check() -> int | None:
        events = client.fine_tuning.jobs.list_events(job_id, limit=10).data
        steps = [int(e.data["step"]) for e in events if e.type == "metrics"]  # type: ignore[index]
        return max(steps) if steps and max(steps) >= at_least else None

    return int(wait_for(check, timeout=300))


def messages(client: OpenAI, job_id: str) -> list[str]:
    return [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=200)]


def ray_jobs_of(stack: Stack, key: str) -> dict[str, Any]:
    """This run's Ray jobs by submission id."""
    return {
        j.submission_id: j for j in stack.jobs().list_jobs() if (j.metadata or {}).get("tunehouse_run") == key
    }


@pytest.fixture(scope="module")
def finished(stack: Stack, chat_file: str) -> tuple[Any, list[str]]:
    client = stack.client()
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=chat_file, method=sft(2, 4))
    seen = [job.status]
    done = wait_done(client, job.id, seen)
    return done, seen


def test_every_socket_of_the_cluster_and_server_is_bound_to_loopback(stack: Stack) -> None:
    assert stack.cluster.ns.interface_addresses() == ["127.0.0.1", "::1"]
    listeners = stack.cluster.ns.listeners()
    assert any(a.endswith(":8265") for a in listeners)  # the Jobs API is among them
    assert [a for a in listeners if not is_loopback(a)] == []


def test_a_run_on_ray_goes_queued_running_succeeded_with_checkpoints_and_output(
    stack: Stack, finished: tuple[Any, list[str]]
) -> None:
    done, seen = finished
    assert done.status == "succeeded", done.error
    assert seen[0] in ("validating_files", "queued") and "running" in seen and seen[-1] == "succeeded", seen
    assert done.fine_tuned_model and done.trained_tokens
    steps = [c.step_number for c in stack.client().fine_tuning.jobs.checkpoints.list(done.id)]
    assert steps and max(steps) == 8  # 16 rows, batch 4, 2 epochs
    run_dir = stack.server.home / "runs" / run_key(done.id)
    assert (run_dir / "checkpoints" / "step-8").is_dir()
    assert any((run_dir / "model").iterdir())


def test_the_ray_job_is_the_run_key_running_the_servers_python_with_the_runs_resources(
    stack: Stack, finished: tuple[Any, list[str]]
) -> None:
    done, _ = finished
    info = stack.jobs().get_job_info(run_key(done.id))
    assert info.status == "SUCCEEDED" and info.driver_exit_code == 0
    assert info.entrypoint.startswith(f"exec {sys.executable} -m tunehouse.trainer ")
    assert info.metadata == {"tunehouse_run": run_key(done.id), "attempt": "1"}
    env = info.runtime_env["env_vars"]
    assert set(env) <= ALLOWED_JOB_ENV, env
    assert "do-not-ship-me" not in repr(info.runtime_env) + repr(info.metadata)
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) > 3  # a stop from outside Tunehouse still gets its checkpoint


def test_placement_is_an_event_naming_a_live_node_of_the_cluster(
    stack: Stack, finished: tuple[Any, list[str]]
) -> None:
    from ray.util.state import list_nodes

    done, _ = finished
    placed = [m for m in messages(stack.client(), done.id) if m.startswith("trainer placed on Ray node ")]
    assert len(placed) == 1, placed
    nodes = {n.node_id for n in list_nodes(address=stack.cluster.jobs_address)}
    assert placed[0].split()[5] in nodes
    assert "with 0 GPU(s) and 1.0 CPU(s)" in placed[0]  # a CPU-only cluster: the run asked for no GPU
    assert "devices: CPU only" in messages(stack.client(), done.id)
    with console_client(stack.server, stack.keys["api_key"]) as console:
        page = console.get(f"/console/runs/{run_key(done.id)}").text
    assert f"Ray node <code>{placed[0].split()[5]}</code> (127.0.0.1), 0 GPU(s)" in page


def test_cancel_on_ray_ends_with_a_checkpoint_of_the_step_reached(stack: Stack, chat_file: str) -> None:
    client = stack.client()
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=chat_file, method=sft(50, 1))
    reached = wait_step(client, job.id, at_least=2)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    wait_for(lambda: messages(client, job.id)[0] == "Fine-tuning job cancelled", timeout=300)
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps and max(steps) >= reached
    # The trainer left on its own after its checkpoint (the stop-request file), not killed by a job stop.
    info = stack.jobs().get_job_info(run_key(job.id))
    assert info.status == "FAILED" and info.driver_exit_code == 3, info  # EXIT_STOPPED


def test_pause_on_ray_checkpoints_and_resume_is_the_runs_second_ray_job(stack: Stack, chat_file: str) -> None:
    client, lenient = stack.client(), stack.client(strict=False)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=chat_file, method=sft(4, 2))
    wait_step(client, job.id, at_least=2)
    lenient.fine_tuning.jobs.pause(job.id)
    wait_for(lambda: lenient.fine_tuning.jobs.retrieve(job.id).status == "paused", timeout=300)
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    assert 2 <= paused_at < 32
    assert lenient.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    key = run_key(job.id)
    jobs = ray_jobs_of(stack, key)
    assert set(jobs) == {key, f"{key}-2"}
    assert jobs[f"{key}-2"].status == "SUCCEEDED"
    assert any(f"at step {paused_at} of 32" in m for m in messages(client, job.id))


def test_a_control_plane_killed_mid_run_reattaches_to_the_ray_job_on_restart(
    stack: Stack, chat_file: str
) -> None:
    client = stack.client()
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=chat_file, method=sft(3, 1))
    wait_step(client, job.id, at_least=2)
    stack.server.crash()  # SIGKILL: no shutdown hook runs
    key = run_key(job.id)
    assert stack.jobs().get_job_status(key) == "RUNNING"  # the trainer outlives its control plane
    stack.server.start()
    done = wait_done(client, job.id)
    assert done.status == "succeeded", done.error
    # Reattached, not resumed: the first job finished the run, and there was never a second one.
    assert set(ray_jobs_of(stack, key)) == {key}
    assert stack.jobs().get_job_info(key).driver_exit_code == 0
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert max(steps) == 48


@pytest.fixture
def finetune(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Qianfan's SDK (console FineTune V2) as alice, against the module's server."""
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    alice = stack.keys
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", stack.server.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", alice["access_key"])
    monkeypatch.setenv("QIANFAN_SECRET_KEY", alice["secret_key"])
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # re-read the environment
    return FineTune


def qianfan_task(finetune: Any, chat_file: str, resources: dict[str, Any], hp: dict[str, Any]) -> str:
    job = finetune.V2.create_job(name="rt", model=MODEL, train_mode="SFT").body["result"]["jobId"]
    return str(
        finetune.V2.create_task(
            job_id=job,
            params_scale="LoRA",
            hyper_params=hp,
            dataset_config={"sourceType": "Platform", "versions": [{"versionId": chat_file}]},
            resource_config=resources,
        ).body["result"]["taskId"]
    )


def test_a_run_asking_for_more_gpus_than_the_cluster_has_is_refused_at_create(
    stack: Stack, chat_file: str, finetune: Any
) -> None:
    from qianfan.errors import RequestError

    with pytest.raises(RequestError) as refused:
        qianfan_task(finetune, chat_file, {"gpus": 8}, {"epoch": 1})
    said = str(refused.value)
    assert refused.value.status_code == 400 and "InvalidParameter" in said, said
    assert "param[resourceConfig.gpus]" in said and "cannot be placed" in said
    assert "has none" in said and "at most 2 CPU worker(s)" in said  # a CPU cluster, TUNEHOUSE_CPU_RANKS=2


def test_a_run_no_single_node_can_hold_still_fails_at_start_with_the_reason(
    stack: Stack, chat_file: str, finetune: Any
) -> None:
    # 3 CPUs: the cluster has them in total (so the create is accepted), no node has them alone.
    task = qianfan_task(finetune, chat_file, {"cpus": 3}, {"epoch": 1})

    def failed() -> dict[str, Any] | None:
        detail = dict(finetune.V2.task_detail(task_id=task).body["result"])
        return detail if detail["runStatus"] in ("Failed", "Done") else None

    detail = wait_for(failed, timeout=120)
    assert detail["runStatus"] == "Failed"
    assert "asks for 0 GPU(s) and 3 CPU(s) on one node" in detail["errorMessage"], detail
    assert ray_jobs_of(stack, task.removeprefix("task-")) == {}  # never submitted, so never PENDING


def train_losses(client: OpenAI, job_id: str) -> dict[int, float]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=200).data
    return {
        int(e.data["step"]): float(e.data["train_loss"])  # type: ignore[index]
        for e in events
        if e.type == "metrics" and "train_loss" in (e.data or {})
    }


def test_a_two_worker_run_spans_both_nodes_and_trains_as_one_process_over_the_same_batch(
    stack: Stack, chat_file: str, finetune: Any
) -> None:
    # No LoRA dropout: its masks would differ with the split of the batch over the workers.
    hp = {"epoch": 2, "batchSize": 4, "learningRate": 0.003, "loraDropout": 0.0}
    spread = qianfan_task(finetune, chat_file, {"gpus": 2}, hp)
    single = qianfan_task(finetune, chat_file, {}, hp)
    client = stack.client(strict=False)
    tasks = {"spread": spread, "single": single}
    ids = {name: "ftjob-" + task.removeprefix("task-") for name, task in tasks.items()}
    done = {name: wait_done(client, job_id, timeout=600) for name, job_id in ids.items()}
    assert done["spread"].status == "succeeded", (done["spread"].error, messages(client, ids["spread"]))
    assert done["single"].status == "succeeded", done["single"].error

    said = messages(client, ids["spread"])
    placed = [m for m in said if m.startswith("trainer placed on Ray nodes ")]
    assert len(placed) == 1, said
    from ray.util.state import list_nodes

    live = {n.node_id for n in list_nodes(address=stack.cluster.jobs_address)}
    named = {word for word in placed[0].replace(",", " ").split() if word in live}
    assert len(named) == 2, placed  # two distinct nodes of the cluster
    assert "2 workers (STRICT_SPREAD) with 0 GPU(s) and 1.0 CPU(s) each" in placed[0]
    assert any("distributed: 2 ranks (gloo), DDP" in m for m in said), said
    job = stack.jobs().get_job_info(run_key(ids["spread"]))
    assert "-m tunehouse.trainer.ray_train --workers 2 " in job.entrypoint and job.driver_exit_code == 0

    spread_losses, single_losses = train_losses(client, ids["spread"]), train_losses(client, ids["single"])
    print(f"losses two workers: {spread_losses}\nlosses one process: {single_losses}")
    assert spread_losses.keys() == single_losses.keys() and len(spread_losses) >= 4
    for step, loss in single_losses.items():
        assert spread_losses[step] == pytest.approx(loss, rel=1e-4), step


def test_a_two_worker_run_the_cluster_cannot_place_after_its_launch_fails_with_what_was_not_placed(
    stack: Stack, chat_file: str, finetune: Any
) -> None:
    # node2's only CPU taken: the cluster still has what the spread run asks for (the create and the
    # launch accept it), but Ray can place one of its two workers only.
    jobs = stack.jobs()
    hog = jobs.submit_job(
        entrypoint="sleep 900",
        submission_id=f"hog-{uuid.uuid4().hex[:6]}",
        entrypoint_num_cpus=1,
        entrypoint_resources={"node2": 1},
    )
    try:
        wait_for(lambda: jobs.get_job_status(hog) == "RUNNING", timeout=120)
        task = qianfan_task(finetune, chat_file, {"gpus": 2}, {"epoch": 1})
        key = task.removeprefix("task-")
        client = stack.client(strict=False)
        # 2 tries of 15 s, with the driver's start and Ray Train's backoff: well within the deadline.
        done = wait_done(client, f"ftjob-{key}", timeout=240)
    finally:
        jobs.stop_job(hog)
        wait_for(lambda: jobs.get_job_status(hog) in ("STOPPED", "FAILED"), timeout=120)
    assert done.status == "failed"
    reason = (
        "the Ray cluster did not place the run's 2 workers (1 CPU each, STRICT_SPREAD) within 15 s, 2 times"
    )
    assert done.error is not None and reason in done.error.message, done.error
    assert any(reason in m for m in messages(client, done.id))  # the failed status event
    info = jobs.get_job_info(key)
    assert info.status == "FAILED" and info.driver_exit_code == 1, info  # EXIT_FAILED
    assert "--placement-timeout-s 15 --placement-retries 1 " in info.entrypoint
    assert set(ray_jobs_of(stack, key)) == {key}  # failed, not resumed


def test_a_two_worker_run_that_loses_a_node_mid_run_ends_failed_with_the_reason_in_bounded_time(
    stack: Stack, chat_file: str, finetune: Any
) -> None:
    # The remaining node cannot hold a STRICT_SPREAD run of two: no resume could ever be placed.
    task = qianfan_task(finetune, chat_file, {"gpus": 2}, {"epoch": 20, "batchSize": 1})
    key = task.removeprefix("task-")
    client = stack.client(strict=False)
    job_id = f"ftjob-{key}"
    try:
        wait_step(stack.client(), job_id, at_least=3)
        started = time.monotonic()
        stack.cluster.nodes["node2"].kill()
        done = wait_done(client, job_id, timeout=400)
        took = time.monotonic() - started
    finally:
        stack.cluster.add_node("node2", 1)  # the cluster whole again for the tests after this one
        stack.cluster.wait_for_nodes(2)
    said = messages(client, job_id)
    print(f"ended {done.status} {took:.0f} s after the kill: {done.error}")
    assert done.status == "failed", said
    # The lost worker is the reason, not the broken collective the surviving rank reported.
    assert done.error is not None and " of 2 was lost (" in done.error.message, done.error
    # Not waiting on a placement that can never come: ended at once, its one job never retried by Ray.
    assert took < 120
    runs = ray_jobs_of(stack, key)
    assert set(runs) == {key} and runs[key].status == "FAILED", runs


# ---- Ray with the artifacts in S3 (SeaweedFS in the same namespace) --------------------------------
S3_ROOT = f"s3://{BUCKET}/th-ray"


@dataclass
class S3Stack:
    server: LiveServer
    client: OpenAI

    def restart(self, executor: str) -> None:
        """The same control plane (records, bucket) on another executor; its node-local scratch wiped, so
        nothing but the store carries a run over."""
        self.server.stop()
        shutil.rmtree(self.server.home / "cache", ignore_errors=True)
        self.server.extra_env["TUNEHOUSE_EXECUTOR"] = executor
        self.server.start()


@pytest.fixture(scope="module")
def s3_stack(stack: Stack, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Stack]:
    home = tmp_path_factory.mktemp("ray-s3-srv") / "home"
    (home / "models").mkdir(parents=True)
    shutil.copytree(tiny_model, home / "models" / MODEL)
    server = LiveServer(
        home=home,
        database_url=f"sqlite:///{home / 'tunehouse.db'}",
        extra_env={
            "TUNEHOUSE_EXECUTOR": "ray",
            "TUNEHOUSE_RAY_ADDRESS": stack.cluster.jobs_address,
            "TUNEHOUSE_TEST_STEP_DELAY": STEP_DELAY_S,
            "TUNEHOUSE_STORAGE_URL": S3_ROOT,
            **stack.s3.env,
        },
    )
    server.start()
    keys = server.keys("alice")
    client = OpenAI(base_url=server.url + "/v1", api_key=keys["api_key"], _strict_response_validation=False)
    try:
        yield S3Stack(server, client)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_chat_file(s3_stack: S3Stack) -> str:
    return s3_stack.client.files.create(file=("chat.jsonl", jsonl(CHAT_ROWS)), purpose="fine-tune").id


def bucket_files(stack: Stack, key: str) -> list[str]:
    """Every object of the run's folder in the bucket, relative to it."""
    prefix = f"{S3_ROOT.removeprefix('s3://')}/runs/{key}/"
    return sorted(p.removeprefix(prefix) for p in stack.s3.filesystem().find(prefix))


def test_a_run_on_ray_with_s3_storage_succeeds_with_its_checkpoints_and_output_in_the_bucket(
    stack: Stack, s3_stack: S3Stack, s3_chat_file: str
) -> None:
    client = s3_stack.client
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=s3_chat_file, method=sft(2, 4))
    done = wait_done(client, job.id)
    assert done.status == "succeeded", (done.error, messages(client, job.id))
    key = run_key(job.id)
    files = bucket_files(stack, key)
    assert "events.jsonl" in files and "spec.json" in files
    assert any(f.startswith("checkpoints/step-8/") for f in files), files
    assert any(f.startswith("model/") for f in files), files
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps and max(steps) == 8
    # The job read its spec from the bucket, not from a disk it would have to share with the server.
    info = stack.jobs().get_job_info(key)
    assert info.entrypoint.endswith(f" {S3_ROOT}/runs/{key}/spec.json"), info.entrypoint
    assert "TUNEHOUSE_STORAGE_URL" in info.runtime_env["env_vars"]
    assert stack.s3.secret_key not in repr(info.runtime_env) + repr(info.metadata)


def test_a_stop_on_ray_with_s3_storage_asks_through_the_bucket_and_ends_with_a_checkpoint(
    stack: Stack, s3_stack: S3Stack, s3_chat_file: str
) -> None:
    client = s3_stack.client
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=s3_chat_file, method=sft(50, 1))
    reached = wait_step(client, job.id, at_least=2)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    wait_for(lambda: messages(client, job.id)[0] == "Fine-tuning job cancelled", timeout=300)
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)]
    assert steps and max(steps) >= reached
    key = run_key(job.id)
    files = bucket_files(stack, key)
    assert "stop.request" in files  # the request went through the store
    assert any(f.startswith(f"checkpoints/step-{max(steps)}/") for f in files), files
    assert not (s3_stack.server.home / "cache" / "scratch" / key / "stop.request").exists()
    info = stack.jobs().get_job_info(key)
    assert info.status == "FAILED" and info.driver_exit_code == 3, info  # left on its own: EXIT_STOPPED


def test_a_run_paused_on_ray_resumes_from_s3_on_the_local_executor_and_back(
    stack: Stack, s3_stack: S3Stack, s3_chat_file: str
) -> None:
    client = s3_stack.client
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=s3_chat_file, method=sft(6, 2))
    key = run_key(job.id)

    def pause_after(step: int) -> int:
        wait_step(client, job.id, at_least=step)
        client.fine_tuning.jobs.pause(job.id)
        wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "paused", timeout=300)
        return int(client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number)

    on_ray = pause_after(2)
    s3_stack.restart("local")
    client.fine_tuning.jobs.resume(job.id)
    on_local = pause_after(on_ray + 2)
    s3_stack.restart("ray")
    client.fine_tuning.jobs.resume(job.id)
    done = wait_done(client, job.id)
    assert done.status == "succeeded", (done.error, messages(client, job.id))
    said = messages(client, job.id)
    assert any(f"at step {on_ray} of 48" in m for m in said), said
    assert any(f"at step {on_local} of 48" in m for m in said), said
    # Attempts 1 and 3 ran on Ray; the second was a local process of the server.
    assert set(ray_jobs_of(stack, key)) == {key, f"{key}-3"}
    assert max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)) == 48


# Last in the module: it takes the second node away for good.
def test_the_node_killed_mid_run_resumes_the_run_from_its_checkpoint_on_the_other(
    stack: Stack, chat_file: str
) -> None:
    from ray.util.state import list_nodes

    # The live ones: a node2 restarted by an earlier test is listed beside its dead predecessor.
    alive = [("state", "=", "ALIVE")]
    nodes = list_nodes(address=stack.cluster.jobs_address, filters=alive, raise_on_missing_output=False)
    node2 = next(n.node_id for n in nodes if "node2" in (n.resources_total or {}))
    head = next(n.node_id for n in nodes if n.is_head_node)
    jobs = stack.jobs()
    # The head's CPUs taken, a one-CPU run can only be placed on the second node.
    hog = jobs.submit_job(
        entrypoint="sleep 900", submission_id=f"hog-{uuid.uuid4().hex[:6]}", entrypoint_num_cpus=2
    )
    wait_for(lambda: jobs.get_job_status(hog) == "RUNNING", timeout=120)
    client = stack.client()
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=chat_file, method=sft(3, 1))
    key = run_key(job.id)
    wait_for(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, timeout=300)  # epoch 1 saved
    stack.cluster.nodes["node2"].kill()
    jobs.stop_job(hog)  # room on the head for the resumed run
    done = wait_done(client, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    said = messages(client, job.id)
    placed = [m.split()[5] for m in said if m.startswith("trainer placed on Ray node ")]
    assert placed == [head, node2], placed  # newest first: the second attempt ran on the head
    assert any("requeued to resume from checkpoint step 16 (loss 1 of 3)" in m for m in said), said
    runs = ray_jobs_of(stack, key)
    assert set(runs) == {key, f"{key}-2"} and runs[f"{key}-2"].status == "SUCCEEDED"
    assert max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)) == 48
