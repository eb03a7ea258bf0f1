"""The stop request a SIGTERM raises, checked by the training loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StopFlag:
    """Set from the SIGTERM handler; the training loop checks it between optimizer steps."""

    requested: bool = False
