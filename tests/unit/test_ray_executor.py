"""The Ray executor's decisions that need no cluster: job ids, resource requests, placement, the job's env.

The executor against a real cluster is tests/integration/test_ray_executor.py.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tunehouse.config import load_settings
from tunehouse.contract.spec import RunSpec
from tunehouse.executors.base import Resources
from tunehouse.executors.factory import build_executor
from tunehouse.executors.local import LocalExecutor
from tunehouse.executors.ray import (
    RayExecutor,
    Request,
    Workers,
    cluster_refusal,
    decide_request,
    entrypoint,
    job_env,
    plan_workers,
    submission_id,
    unplaceable_reason,
    workers_unplaceable,
)
from tunehouse.scheduler.scheduler import run_resources

CPU_NODE = {"CPU": 2.0, "memory": 8.0 * (1 << 30)}
GPU_NODE = {"CPU": 16.0, "GPU": 4.0, "memory": 64.0 * (1 << 30)}


def test_the_first_launch_is_the_run_key_and_each_later_one_appends_its_attempt() -> None:
    assert submission_id("k3y", 1) == "k3y"
    assert [submission_id("k3y", n) for n in (2, 3)] == ["k3y-2", "k3y-3"]


def test_a_run_that_names_no_gpus_gets_one_where_the_cluster_has_gpus_and_the_cpu_elsewhere() -> None:
    assert decide_request(None, [CPU_NODE, GPU_NODE]) == Request(gpus=1, cpus=1.0, memory_mb=None)
    assert decide_request(None, [CPU_NODE]) == Request(gpus=0, cpus=1.0, memory_mb=None)


def test_what_a_run_asks_for_is_what_is_requested() -> None:
    asked = Resources(gpus=3, cpus=6.0, memory_mb=2048)
    assert decide_request(asked, [CPU_NODE]) == Request(gpus=3, cpus=6.0, memory_mb=2048)


def test_a_request_one_node_can_hold_is_placeable() -> None:
    assert unplaceable_reason(Request(4, 8.0, 1024), [CPU_NODE, GPU_NODE], "http://h:8265") is None


def test_a_request_must_fit_on_one_node_not_on_the_cluster_total() -> None:
    reason = unplaceable_reason(Request(8, 1.0, None), [GPU_NODE, GPU_NODE], "http://h:8265")
    assert reason is not None
    assert "asks for 8 GPU(s)" in reason and "2 live node(s)" in reason and "4 GPU(s)" in reason
    assert "http://h:8265" in reason


def test_memory_beyond_every_node_is_unplaceable_and_named() -> None:
    reason = unplaceable_reason(Request(0, 1.0, 1 << 20), [CPU_NODE], "http://h:8265")
    assert reason is not None and "1048576 MB of memory" in reason and "8192 MB" in reason


def test_a_cluster_with_no_live_node_places_nothing() -> None:
    assert unplaceable_reason(Request(0, 1.0, None), [], "http://h:8265") is not None


def test_the_entrypoint_runs_the_trainer_with_an_absolute_interpreter_quoted() -> None:
    line = entrypoint("/opt/my env/bin/python", Path("/srv/th/runs/k/spec.json"))
    assert line == "exec '/opt/my env/bin/python' -m tunehouse.trainer /srv/th/runs/k/spec.json"


def test_the_job_env_holds_named_settings_and_never_a_secret() -> None:
    server_env = {
        "TUNEHOUSE_COMPILE": "0",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "TUNEHOUSE_MASTER_KEY": "fernet",
        "TUNEHOUSE_DATABASE_URL": "postgresql://u:pw@db/th",
        "HOME": "/root",
    }
    env = job_env(Request(0, 4.0, None), server_env)
    assert env["TUNEHOUSE_COMPILE"] == "0" and env["OMP_NUM_THREADS"] == "4"
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) > 3
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "TUNEHOUSE_MASTER_KEY", "HOME"} & set(env)
    assert "s3cret" not in repr(env) and "pw@" not in repr(env)


def test_the_ray_executor_needs_the_jobs_api_address() -> None:
    with pytest.raises(ValueError, match="TUNEHOUSE_RAY_ADDRESS"):
        RayExecutor("")


def test_ray_is_chosen_by_the_environment_and_lends_none_of_this_machines_gpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_GPUS", "0,1")
    assert load_settings().executor == "local" and isinstance(build_executor(load_settings()), LocalExecutor)
    monkeypatch.setenv("TUNEHOUSE_EXECUTOR", "ray")
    monkeypatch.setenv("TUNEHOUSE_RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setenv("TUNEHOUSE_RAY_PYTHON", "/opt/venv/bin/python")
    settings = load_settings()
    assert settings.gpus == ()
    executor = build_executor(settings)
    assert isinstance(executor, RayExecutor)
    assert executor.address == "http://127.0.0.1:8265" and executor.python == "/opt/venv/bin/python"


def test_an_unknown_executor_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_EXECUTOR", "slurm")
    with pytest.raises(ValueError, match="slurm"):
        load_settings()


def _run(extra: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(extra=extra)


def test_a_runs_resources_come_from_its_own_field_or_qianfans_resource_config() -> None:
    assert run_resources(_run({})) == Resources()  # type: ignore[arg-type]
    own = _run({"resources": {"gpus": 2, "cpus": 3, "memory_mb": 512}})
    assert run_resources(own) == Resources(gpus=2, cpus=3.0, memory_mb=512)  # type: ignore[arg-type]
    qianfan = _run({"resourceConfig": {"gpus": 8, "memoryMB": 100}})
    assert run_resources(qianfan) == Resources(gpus=8, memory_mb=100)  # type: ignore[arg-type]


def test_a_run_of_the_default_one_gpu_leaves_gpu_or_cpu_to_the_executor_and_several_are_asked_for() -> None:
    # Every run stores the contract's gpus (default 1); one must still place on a CPU-only cluster.
    assert run_resources(_run({"gpus": 1})) == Resources()  # type: ignore[arg-type]
    assert run_resources(_run({"gpus": 4})) == Resources(gpus=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, True, "4", [1]])
def test_a_resource_count_that_is_not_a_non_negative_number_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="gpus"):
        run_resources(_run({"resources": {"gpus": bad}}))  # type: ignore[arg-type]


class StubJobs:
    """Stands in for the Jobs API client (the cluster is not under test here): one PENDING job."""

    def __init__(self) -> None:
        self.stopped: list[str] = []

    def get_job_info(self, sid: str) -> SimpleNamespace:
        from ray.job_submission import JobStatus

        return SimpleNamespace(status=JobStatus.PENDING, submission_id=sid, driver_node_id=None)

    def stop_job(self, sid: str) -> bool:
        self.stopped.append(sid)
        return True


def _pending_executor(nodes: list[dict[str, float]]) -> tuple[RayExecutor, StubJobs]:
    pytest.importorskip("ray")
    executor = RayExecutor("http://127.0.0.1:1")
    jobs = StubJobs()
    executor._client = jobs
    executor._nodes = lambda: nodes  # type: ignore[method-assign]
    return executor, jobs


HANDLE = {"submission_id": "k3y", "request": {"gpus": 2, "cpus": 1.0, "memory_mb": None}}


def test_a_waiting_job_that_a_live_node_could_hold_keeps_waiting() -> None:
    executor, jobs = _pending_executor([GPU_NODE])
    assert executor.poll(HANDLE) is None and jobs.stopped == []


def test_a_waiting_job_no_live_node_can_hold_any_more_is_withdrawn_not_left_pending() -> None:
    executor, jobs = _pending_executor([CPU_NODE])  # the GPU node it waited for is gone
    assert executor.poll(HANDLE) is not None and jobs.stopped == ["k3y"]


class StubCluster(StubJobs):
    """A Jobs API holding the given jobs by id (status name, metadata run); records submissions."""

    def __init__(self, jobs: dict[str, str]) -> None:
        super().__init__()
        self.jobs = jobs
        self.submitted: list[str] = []

    def get_job_info(self, sid: str) -> SimpleNamespace:
        from ray.job_submission import JobStatus

        if sid not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return SimpleNamespace(
            status=JobStatus(self.jobs[sid]), submission_id=sid, metadata={"tunehouse_run": "k3y"}
        )

    def submit_job(self, *, submission_id: str, **kwargs: object) -> str:
        self.submitted.append(submission_id)
        self.last = kwargs
        return submission_id


def _executor_over(jobs: dict[str, str]) -> tuple[RayExecutor, StubCluster]:
    pytest.importorskip("ray")
    executor = RayExecutor("http://127.0.0.1:1")
    cluster = StubCluster(jobs)
    executor._client = cluster
    executor._nodes = lambda: [CPU_NODE]  # type: ignore[method-assign]
    return executor, cluster


def write_spec(tmp_path: Path, gpus: int = 1, storage_dir: str | None = None) -> Path:
    spec = RunSpec(
        run_id="k3y",
        model_path=tmp_path / "model",
        train_files=[tmp_path / "train.jsonl"],
        output_dir=tmp_path,
        gpus=gpus,
        storage_dir=storage_dir,
    )
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())
    return path


def test_a_launch_whose_job_exists_already_reattaches_instead_of_submitting(tmp_path: Path) -> None:
    executor, cluster = _executor_over({"k3y-2": "RUNNING"})
    handle = executor.start("k3y", write_spec(tmp_path), tmp_path, attempt=2)
    assert handle["submission_id"] == "k3y-2" and cluster.submitted == []


def test_an_earlier_attempt_still_running_is_reattached_so_a_run_never_has_two_trainers(
    tmp_path: Path,
) -> None:
    executor, cluster = _executor_over({"k3y": "RUNNING"})
    handle = executor.start("k3y", write_spec(tmp_path), tmp_path, attempt=2)
    assert handle["submission_id"] == "k3y" and cluster.submitted == []


def test_an_earlier_attempt_that_ended_leaves_the_new_attempt_its_own_job(tmp_path: Path) -> None:
    executor, cluster = _executor_over({"k3y": "FAILED"})
    handle = executor.start("k3y", write_spec(tmp_path), tmp_path, attempt=2)
    assert handle["submission_id"] == "k3y-2" and cluster.submitted == ["k3y-2"]


# ---- runs of several workers (Ray Train) ------------------------------------------------------------
ONE_CPU = Request(gpus=2, cpus=1.0, memory_mb=None)


def test_workers_take_one_gpu_each_where_the_cluster_has_gpus_and_run_on_the_cpu_elsewhere() -> None:
    assert plan_workers(2, ONE_CPU, [CPU_NODE, GPU_NODE], "pack") == Workers(2, 1, 1.0, "PACK")
    assert plan_workers(2, ONE_CPU, [CPU_NODE], "spread") == Workers(2, 0, 1.0, "STRICT_SPREAD")


def test_cpu_workers_are_bounded_by_the_cpu_ranks_setting_as_on_the_local_executor() -> None:
    plan = Workers(3, 0, 1.0, "PACK")
    reason = workers_unplaceable(plan, [CPU_NODE, CPU_NODE], 2, "http://h:8265")
    assert reason is not None and "at most 2 CPU worker(s) (TUNEHOUSE_CPU_RANKS)" in reason
    assert workers_unplaceable(plan, [CPU_NODE, CPU_NODE], 3, "http://h:8265") is None


def test_workers_may_span_nodes_but_not_exceed_the_clusters_total() -> None:
    nodes = [GPU_NODE, GPU_NODE]  # 4 GPUs each
    assert workers_unplaceable(Workers(8, 1, 1.0, "PACK"), nodes, 1, "http://h:8265") is None
    reason = workers_unplaceable(Workers(9, 1, 1.0, "PACK"), nodes, 1, "http://h:8265")
    assert reason is not None and "9 workers of 1 GPU each" in reason and "8 GPU in total" in reason


def test_spread_workers_need_a_node_each() -> None:
    nodes = [{"CPU": 2.0}, {"CPU": 1.0}]
    assert workers_unplaceable(Workers(2, 0, 1.0, "STRICT_SPREAD"), nodes, 3, "http://h:8265") is None
    reason = workers_unplaceable(Workers(3, 0, 1.0, "STRICT_SPREAD"), nodes, 3, "http://h:8265")
    assert reason is not None and "2 node(s)" in reason and "TUNEHOUSE_RAY_PLACEMENT=spread" in reason


def test_the_create_time_check_refuses_more_gpus_than_the_cluster_has_in_total() -> None:
    assert cluster_refusal(Request(8, 1.0, None), [GPU_NODE, GPU_NODE], "http://h:8265") is None
    reason = cluster_refusal(Request(9, 1.0, None), [GPU_NODE, GPU_NODE], "http://h:8265")
    assert reason is not None and "asks for 9 GPU(s)" in reason and "has 8 in total" in reason


def test_the_workers_entrypoint_runs_the_ray_train_driver_with_the_plan() -> None:
    line = entrypoint("/py", "s3://b/runs/k/spec.json", Workers(2, 0, 1.0, "STRICT_SPREAD"))
    assert line == (
        "exec /py -m tunehouse.trainer.ray_train --workers 2 --gpus-each 0 --cpus-each 1 "
        "--strategy STRICT_SPREAD --placement-timeout-s 300 --placement-retries 2 s3://b/runs/k/spec.json"
    )


def test_the_workers_entrypoint_bounds_the_wait_for_their_placement_as_configured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_EXECUTOR", "ray")
    monkeypatch.setenv("TUNEHOUSE_RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setenv("TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S", "45")
    monkeypatch.setenv("TUNEHOUSE_RAY_PLACEMENT_RETRIES", "0")
    executor = build_executor(load_settings())
    assert isinstance(executor, RayExecutor)
    assert (executor.placement_timeout_s, executor.placement_retries) == (45.0, 0)
    line = entrypoint("/py", "/s.json", Workers(2, 0, 1.0, "PACK"), 45.0, 0)
    assert " --placement-timeout-s 45 --placement-retries 0 /s.json" in line


def test_a_placement_wait_of_zero_seconds_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNEHOUSE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="TUNEHOUSE_RAY_PLACEMENT_TIMEOUT_S"):
        load_settings()


def test_a_run_of_two_ranks_is_one_driver_job_holding_nothing_itself(tmp_path: Path) -> None:
    executor, cluster = _executor_over({})
    executor.cpu_ranks = 2
    handle = executor.start("k3y", write_spec(tmp_path, gpus=2), tmp_path, resources=Resources(gpus=2))
    assert handle["workers"] == {"count": 2, "gpus_each": 0, "cpus_each": 1.0, "strategy": "PACK"}
    assert cluster.last["entrypoint_num_cpus"] == 0 and cluster.last["entrypoint_num_gpus"] == 0
    assert "-m tunehouse.trainer.ray_train --workers 2 " in str(cluster.last["entrypoint"])


def test_a_run_in_the_store_reads_its_spec_and_its_stop_request_there(tmp_path: Path) -> None:
    store = tmp_path / "store"  # any storage location; an s3:// URL in production
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    executor, cluster = _executor_over({})
    handle = executor.start("k3y", write_spec(scratch, storage_dir=str(store)), scratch)
    assert str(cluster.last["entrypoint"]).endswith(f" {store}/spec.json")
    executor.stop(handle)
    assert (store / "stop.request").is_file() and not (scratch / "stop.request").exists()


def test_the_placement_setting_leaves_the_executor_its_placement_answer() -> None:
    executor = RayExecutor("http://127.0.0.1:1", placement="spread")
    assert callable(executor.placement) and executor.placement({"submission_id": "k3y"}) is None
