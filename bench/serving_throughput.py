#!/usr/bin/env python3
"""Serving throughput: tokens/s and time to first token of one engine, at 1 and at N concurrent requests.

Starts the engine Tunehouse would use (its own process: a vLLM OpenAI server or a transformers worker) on a
base model directory, optionally loads a LoRA adapter over it, and sends greedy chat requests through the
engine interface the supervisor uses, so the figures are what a deployment serves. For each concurrency it
reports the requests' median and worst time to first token and the output tokens per second of the whole
batch (completion tokens / wall time from the first send to the last token).

  .venv/bin/python bench/serving_throughput.py --engine vllm --model /path/to/base --adapter /path/to/adapter
  TUNEHOUSE_VLLM_PYTHON=/opt/vllm/bin/python TUNEHOUSE_VLLM_ARGS="--gpu-memory-utilization 0.5" \\
      .venv/bin/python bench/serving_throughput.py --engine vllm --model ~/.tunehouse/models/tunehouse-tiny
  .venv/bin/python bench/serving_throughput.py --engine transformers --model DIR --concurrency 1 8

Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tunehouse.serving.engine import BaseSpec, Delta, Engine, GenerationParams, Usage  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."}]


@dataclass
class Figures:
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_median_s: float
    ttft_max_s: float


async def one_request(engine: Engine, adapter: str | None, params: GenerationParams) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed request."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    async for event in engine.generate(adapter, PROMPT, params):
        if isinstance(event, Delta) and event.text and first is None:
            first = time.perf_counter() - start
        elif isinstance(event, Usage):
            tokens = event.completion_tokens
    return (first if first is not None else time.perf_counter() - start), tokens


async def measure(
    engine: Engine, adapter: str | None, concurrency: int, max_tokens: int
) -> Figures:
    params = GenerationParams(max_tokens=max_tokens, temperature=0)
    start = time.perf_counter()
    results = await asyncio.gather(*(one_request(engine, adapter, params) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ttfts = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return Figures(
        concurrency=concurrency,
        requests=len(results),
        completion_tokens=tokens,
        wall_s=round(wall, 3),
        tokens_per_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        ttft_median_s=round(statistics.median(ttfts), 3),
        ttft_max_s=round(max(ttfts), 3),
    )


def engine_factory(name: str) -> Callable[[], Engine]:
    if name == "vllm":
        from tunehouse.serving.vllm_engine import VllmEngine

        return VllmEngine
    from tunehouse.serving.transformers_engine import TransformersEngine

    return TransformersEngine


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = engine_factory(args.engine)()
    with tempfile.TemporaryDirectory(prefix="th-bench-") as tmp:
        t0 = time.perf_counter()
        await engine.start(BaseSpec(args.model_name, str(args.model)), Path(tmp) / "engine")
        started = time.perf_counter() - t0
        adapter = None
        if args.adapter is not None:
            adapter = "bench-adapter"
            await engine.load_adapter(adapter, str(args.adapter))
        try:
            await measure(engine, adapter, 1, 4)  # warm-up: first-request compilation is not serving
            figures = [await measure(engine, adapter, c, args.max_tokens) for c in args.concurrency]
        finally:
            await engine.stop()
    return {
        "engine": args.engine,
        "model": str(args.model),
        "adapter": str(args.adapter) if args.adapter else None,
        "max_tokens": args.max_tokens,
        "start_s": round(started, 1),
        "results": [asdict(f) for f in figures],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    ap.add_argument("--model", type=Path, required=True, help="base model directory (Hugging Face layout)")
    ap.add_argument("--model-name", default="tunehouse-tiny")
    ap.add_argument("--adapter", type=Path, help="a PEFT LoRA adapter directory to serve over the base")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    report = asyncio.run(run(args))
    print(f"{args.engine} on {args.model} (adapter: {report['adapter']}), started in {report['start_s']} s")
    print(f"{'concurrency':>11} {'tokens':>7} {'wall s':>8} {'tok/s':>8} {'TTFT med':>9} {'TTFT max':>9}")
    for r in report["results"]:
        print(
            f"{r['concurrency']:>11} {r['completion_tokens']:>7} {r['wall_s']:>8} {r['tokens_per_s']:>8}"
            f" {r['ttft_median_s']:>9} {r['ttft_max_s']:>9}"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
