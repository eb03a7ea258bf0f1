"""The stop request a SIGTERM (or a stop-request file) raises, checked by the training loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STOP_FILE_POLL_S = 0.25
STOP_OBJECT_POLL_S = 1.0  # a request to the object store each time: less often than a local stat


@dataclass
class StopFlag:
    """Set from the SIGTERM handler or the stop-file watcher; the training loop checks it between steps."""

    requested: bool = False


def watch_stop_file(path: Path, flag: StopFlag, interval: float = STOP_FILE_POLL_S) -> threading.Event:
    """Raise ``flag`` once ``path`` exists; set the returned event to end the watch.

    An executor that cannot wait for a checkpoint after its own stop signal writes this file instead, and
    only then stops the process. A daemon thread: it never keeps a finished trainer alive.
    """
    return _watch(path.exists, flag, interval)


def watch_stop_object(url: str, flag: StopFlag, interval: float = STOP_OBJECT_POLL_S) -> threading.Event:
    """The same for a request left in the artifact store (``url``), for a trainer whose node shares no
    disk with the control plane. A store that does not answer is asked again at the next poll."""
    from tunehouse import storage

    def present() -> bool:
        try:
            return storage.isfile(url)
        except OSError:
            return False

    return _watch(present, flag, interval)


def _watch(present: Callable[[], bool], flag: StopFlag, interval: float) -> threading.Event:
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if present():
                flag.requested = True
                return
            done.wait(interval)

    threading.Thread(target=watch, name="tunehouse-stop-request", daemon=True).start()
    return done
