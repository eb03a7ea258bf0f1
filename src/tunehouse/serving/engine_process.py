"""What every engine does with the server process it starts: its pid, why it ended, and stopping its process
group (SIGTERM, then SIGKILL after the engine's grace)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


class EngineProcess:
    STOP_GRACE_S: float = 15.0

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._reason: str | None = None

    def _describe_exit(self, code: int | None) -> str:
        raise NotImplementedError

    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def wait_exit(self) -> str:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._reason is None:
            self._reason = self._describe_exit(code)
        return self._reason

    def exit_reason(self) -> str | None:
        if self.proc is None:
            return None
        if self.proc.returncode is not None and self._reason is None:
            self._reason = self._describe_exit(self.proc.returncode)
        return self._reason

    async def _stop_process(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._reason = "stopped"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
