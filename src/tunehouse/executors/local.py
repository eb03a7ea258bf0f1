"""Runs each trainer as a local subprocess in its own process group, so it outlives a server crash."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from tunehouse.executors.base import Exit, Resources


class LocalExecutor:
    name = "local"

    def __init__(self) -> None:
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self,
        run_key: str,
        spec_path: Path,
        run_dir: Path,
        gpu: str | None = None,
        resources: Resources | None = None,  # this node's GPUs are handed out one per run (``gpu``)
        attempt: int = 1,
    ) -> dict[str, Any]:
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu  # the trainer's cuda:0 is the GPU the scheduler gave this run
        with (
            open(run_dir / "trainer.stdout.log", "ab") as out,
            open(run_dir / "trainer.stderr.log", "ab") as err,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-m", "tunehouse.trainer", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=run_dir,
                env=env,
                start_new_session=True,  # a server crash or Ctrl-C must not take the trainer with it
            )
        self._children[proc.pid] = proc
        return {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}

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
        self._signal(handle, signal.SIGTERM)

    def kill(self, handle: dict[str, Any]) -> None:
        self._signal(handle, signal.SIGKILL)

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
