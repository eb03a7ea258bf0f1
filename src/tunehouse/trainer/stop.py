"""The stop request a SIGTERM (or a stop-request file) raises, checked by the training loop."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

STOP_FILE_POLL_S = 0.25


@dataclass
class StopFlag:
    """Set from the SIGTERM handler or the stop-file watcher; the training loop checks it between steps."""

    requested: bool = False


def watch_stop_file(path: Path, flag: StopFlag, interval: float = STOP_FILE_POLL_S) -> threading.Event:
    """Raise ``flag`` once ``path`` exists; set the returned event to end the watch.

    An executor that cannot wait for a checkpoint after its own stop signal writes this file instead, and
    only then stops the process. A daemon thread: it never keeps a finished trainer alive.
    """
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if path.exists():
                flag.requested = True
                return
            done.wait(interval)

    threading.Thread(target=watch, name="tunehouse-stop-file", daemon=True).start()
    return done
