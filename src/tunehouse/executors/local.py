"""Runs each trainer as a local subprocess in its own process group, so it outlives a server crash.

A run of N > 1 GPUs (RunSpec.gpus) is launched as ``torchrun --nproc-per-node N`` on the run's GPU set:
torchrun (the handle's pid) starts one rank per GPU, each in a session of its own, and ends them all
when one dies. A stop signals rank 0 alone: the ranks agree on a stop after every step, and rank 0 has
its handler installed once it has reported anything (a rank still starting would die of a SIGTERM).
torchrun itself is not signalled: it would forward the SIGTERM, then kill the ranks 30 s later, in the
middle of a long checkpoint. A kill takes the ranks first.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tunehouse.contract.spec import load_spec
from tunehouse.executors.base import Exit, Resources
from tunehouse.executors.gpus import unplaceable


def trainer_command(spec_path: Path, ranks: int, run_key: str) -> list[str]:
    """The trainer's command line: one process, or torchrun with ``ranks`` of them on this machine."""
    trainer = ["-m", "tunehouse.trainer", str(spec_path)]
    if ranks <= 1:
        return [sys.executable, *trainer]
    # The interpreter's own path (not whatever `torchrun` is on PATH), rendezvous on loopback only.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(ranks),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        run_key,
        "--local-addr",
        "127.0.0.1",
        *trainer,
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalExecutor:
    name = "local"

    def __init__(self, gpus: tuple[str, ...] = (), cpu_ranks: int = 1) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.gpus = gpus  # what this node lends (Settings.gpus), for the create-time check only
        self.cpu_ranks = cpu_ranks

    def refusal(self, workers: int, resources: Resources) -> str | None:
        return unplaceable(workers, self.gpus, self.cpu_ranks)

    def start(
        self,
        run_key: str,
        spec_path: Path,
        run_dir: Path,
        gpu: str | None = None,
        resources: Resources | None = None,  # this node's GPUs are handed out one per run (``gpu``)
        attempt: int = 1,
    ) -> dict[str, Any]:
        ranks = load_spec(spec_path).gpus
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        if gpu is not None:
            # The trainer's cuda:0 (rank r's cuda:r) is the GPU the scheduler gave this run.
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if ranks > 1:
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # CPU ranks of one machine talk over loopback
        err_log = run_dir / "trainer.stderr.log"
        err_from = err_log.stat().st_size if err_log.exists() else 0  # this launch's part of the log
        with (
            open(run_dir / "trainer.stdout.log", "ab") as out,
            open(err_log, "ab") as err,
        ):
            proc = subprocess.Popen(
                trainer_command(spec_path, ranks, run_key),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=run_dir,
                env=env,
                start_new_session=True,  # a server crash or Ctrl-C must not take the trainer with it
            )
        self._children[proc.pid] = proc
        handle: dict[str, Any] = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}
        if ranks > 1:
            handle.update(ranks=ranks, stderr_from=err_from)
        return handle

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        pid = int(handle.get("pid", 0))
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return None
            del self._children[pid]
            return Exit(code)
        return None if self._alive(handle) else Exit(None)

    def stop(self, handle: dict[str, Any]) -> None:
        if int(handle.get("ranks", 1)) > 1:
            for rank in self._ranks(handle):
                with contextlib.suppress(psutil.Error):
                    if rank.environ().get("RANK") == "0":
                        rank.send_signal(signal.SIGTERM)
                        return
        self._signal(handle, signal.SIGTERM)  # no rank 0 yet: torchrun passes the signal on

    def kill(self, handle: dict[str, Any]) -> None:
        for rank in self._ranks(handle, recursive=True):  # in sessions of their own: killpg misses them
            with contextlib.suppress(psutil.Error):
                rank.kill()
        self._signal(handle, signal.SIGKILL)

    def _ranks(self, handle: dict[str, Any], recursive: bool = False) -> list[psutil.Process]:
        if not self._alive(handle):
            return []
        try:
            return list(psutil.Process(int(handle["pid"])).children(recursive=recursive))
        except (psutil.Error, KeyError, ValueError):
            return []

    def _alive(self, handle: dict[str, Any]) -> bool:
        # The create time guards against a reused pid after a reboot.
        try:
            proc = psutil.Process(int(handle.get("pid", 0)))
            return (
                proc.status() != psutil.STATUS_ZOMBIE
                and abs(proc.create_time() - float(handle.get("create_time", 0))) < 1.0
            )
        except (psutil.Error, ValueError):
            return False

    def _signal(self, handle: dict[str, Any], sig: int) -> None:
        pid = int(handle.get("pid", 0))
        if pid and (pid in self._children or self._alive(handle)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)


@dataclass(frozen=True)
class RankFailure:
    rank: int
    exitcode: int
    detail: str


_FIELD = re.compile(r"^\s*(rank|exitcode|traceback)\s*:\s*(.*?)\s*$")


def rank_failure(stderr: str) -> RankFailure | None:
    """The first rank that failed, from torchrun's failure summary at the end of its stderr (None when
    there is none): its exit code, and why in words (the rank's own last "rank N: ..." line, else what
    torchrun says, e.g. "Signal 9 (SIGKILL) received by PID 123")."""
    at = stderr.rfind("Root Cause (first observed failure):")
    if at < 0:
        return None
    found: dict[str, str] = {}
    for line in stderr[at:].splitlines()[1:]:
        if line.startswith("===="):
            break
        m = _FIELD.match(line)
        if m:
            found[m.group(1)] = m.group(2)
    try:
        rank = int(found["rank"].split()[0])
        exitcode = int(found["exitcode"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None
    said = [ln for ln in stderr[:at].splitlines() if ln.startswith(f"rank {rank}: ")]
    tb = found.get("traceback", "")
    if said:
        detail = said[-1].removeprefix(f"rank {rank}: ")
    elif tb and not tb.startswith("To enable traceback"):
        detail = tb
    else:
        detail = f"exit code {exitcode}"
    return RankFailure(rank, exitcode, detail)
