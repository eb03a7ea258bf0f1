"""Several LoRA deployments of one base are served by one transformers worker process holding the base once.

Real worker processes, a real store. The adapters are two PEFT LoRA adapters of tunehouse-tiny with different
weights (randomly initialised, as two different fine-tunes would have; training two runs here takes minutes),
and a full fine-tune is the base with its weights changed. The oracle is each model loaded with transformers
+ PEFT directly in this test process.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.integration.test_openai_chat import QUESTION, oracle
from tests.unit.conftest import sqlite_database
from tunehouse.core import deployments as dep_svc
from tunehouse.core.accounts import get_or_create_account
from tunehouse.core.deployments import DeploymentStatus as S
from tunehouse.core.deployments import ServingTarget
from tunehouse.serving.engine import Delta, EngineError, GenerationParams
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.db import Database

pytestmark = pytest.mark.heavy(3)

T = TypeVar("T")
GREEDY = GenerationParams(max_tokens=8, temperature=0)
DEADLINE_S = 900  # two workers load a model each on a busy 2-core machine


def make_adapter(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,  # B starts non-zero: the adapter changes the answers
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)  # as a run's output holds its tokenizer
    return out


def make_full_fine_tune(base: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).is_file():
            shutil.copy(base / name, out / name)
    return out


@dataclass
class Served:
    base: Path
    adapters: dict[str, Path]  # deployment key -> adapter dir
    full: tuple[str, Path]
    base_key: str
    db: Database
    supervisor: Supervisor
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(DEADLINE_S)

    def answer(self, key: str) -> str:
        async def collect() -> str:
            events = self.supervisor.generate(key, QUESTION, GREEDY)
            return "".join([e.text async for e in events if isinstance(e, Delta)])

        return self.run(collect())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("shared-engine")
    ad_a = make_adapter(tiny_model, tmp / "run-a" / "adapter", seed=1)
    ad_b = make_adapter(tiny_model, tmp / "run-b" / "adapter", seed=2)
    full = make_full_fine_tune(tiny_model, tmp / "run-full" / "model")
    db = sqlite_database(tmp)
    with db.session() as s:
        account = get_or_create_account(s, "engines").id

        def deploy(name: str, weights: Path | None, kind: str) -> str:
            path = str(weights) if weights else None
            target = ServingTarget(name, "tunehouse-tiny", str(tiny_model), path, kind)
            return dep_svc.create_deployment(s, account, target, endpoint=name, engine="transformers").key

        keys = {deploy("ft:a", ad_a, "lora_adapter"): ad_a, deploy("ft:b", ad_b, "lora_adapter"): ad_b}
        full_key = deploy("ft:full", full, "full")
        base_key = deploy("tunehouse-tiny", None, "base")
    # One event loop for the module's supervisor, as the server has: its engines outlive each test.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    supervisor = Supervisor(db, tmp / "deployments")
    srv = Served(tiny_model, keys, (full_key, full), base_key, db, supervisor, loop)
    yield srv
    srv.run(supervisor.shutdown())
    loop.call_soon_threadsafe(loop.stop)
    thread.join(60)
    db.dispose()


def test_two_adapters_and_the_base_are_served_by_one_worker_holding_the_base_once(served: Served) -> None:
    keys = [*served.adapters, served.base_key]
    for key in keys:
        served.run(served.supervisor.ensure(key))
    stats = [served.supervisor.stats(k) for k in keys]
    assert len({s["pid"] for s in stats}) == 1 and stats[0]["pid"] is not None
    assert [s["shared_by"] for s in stats] == [3, 3, 3]
    # The full fine-tune's worker holds one copy of the same-sized model: two bases would take about twice it.
    served.run(served.supervisor.ensure(served.full[0]))
    alone = served.supervisor.stats(served.full[0])
    assert alone["pid"] not in {s["pid"] for s in stats} and alone["shared_by"] == 1
    assert 0 < stats[0]["memory_bytes"] < 1.5 * alone["memory_bytes"]


def test_each_deployment_answers_with_its_own_adapter_as_peft_does(served: Served) -> None:
    want = {key: oracle(served.base, str(path), QUESTION, 8) for key, path in served.adapters.items()}
    got = {key: served.answer(key) for key in served.adapters}
    assert got == want and len(set(got.values())) == 2
    assert served.answer(served.base_key) == oracle(served.base, None, QUESTION, 8)


def test_a_full_fine_tune_answers_from_its_own_worker_as_transformers_does(served: Served) -> None:
    key, path = served.full
    assert served.answer(key) == oracle(path, None, QUESTION, 8)


def test_deleting_one_adapter_deployment_leaves_the_other_answering_on_the_same_worker(
    served: Served,
) -> None:
    gone, kept = list(served.adapters)
    pid = served.supervisor.stats(kept)["pid"]
    served.run(served.supervisor.delete(gone))
    assert served.supervisor.stats(kept)["pid"] == pid and served.supervisor.stats(kept)["shared_by"] == 2
    assert served.answer(kept) == oracle(served.base, str(served.adapters[kept]), QUESTION, 8)
    with served.db.session() as s:
        assert dep_svc.deployment_by_key(s, gone) is None
        kept_dep = dep_svc.deployment_by_key(s, kept)
        assert kept_dep is not None and kept_dep.status == S.RUNNING
    with pytest.raises(EngineError):
        served.answer(gone)
