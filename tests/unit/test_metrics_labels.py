"""What /metrics derives by itself: dialect and route labels, and nvidia-smi's figures per trainer."""

from __future__ import annotations

from types import SimpleNamespace

from tunehouse.api.metrics import dialect_of, parse_compute_apps, parse_gpus, route_of


def test_each_path_prefix_names_its_dialect() -> None:
    assert dialect_of("/v2/finetuning") == dialect_of("/wenxinworkshop/finetune/createTask") == "qianfan"
    assert dialect_of("/api/v1/fine-tunes/ft-1") == "dashscope"
    assert dialect_of("/v1/fine_tuning/jobs") == "openai"
    assert dialect_of("/console/jobs") == "console"
    assert dialect_of("/healthz") == "other"


def test_routes_are_templates_with_the_qianfan_action_and_unmatched_paths_one_label() -> None:
    def scope(path: str | None, query: bytes = b"") -> dict[str, object]:
        return {"route": SimpleNamespace(path=path) if path else None, "query_string": query}

    assert route_of(scope("/v1/fine_tuning/jobs/{job_id}")) == "/v1/fine_tuning/jobs/{job_id}"
    assert route_of(scope("/v2/finetuning", b"Action=DescribeFineTuningTask")) == (
        "/v2/finetuning?Action=DescribeFineTuningTask"
    )
    assert route_of(scope("/v2/finetuning", b"Action=NoSuchAction%0A")) == "/v2/finetuning?Action=other"
    assert route_of(scope(None)) == "unmatched"


def test_nvidia_smi_memory_is_bytes_per_pid_and_utilisation_a_ratio_per_index_and_uuid() -> None:
    apps = "4242, 1536\n4243, [N/A]\n4242, 512\n"
    assert parse_compute_apps(apps) == {4242: 2048 * 1024 * 1024}
    gpus = "0, GPU-aaaa, 87\n1, GPU-bbbb, [N/A]\n"
    assert parse_gpus(gpus) == {"0": 0.87, "GPU-aaaa": 0.87}
