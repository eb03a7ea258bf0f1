"""``python -m tunehouse.trainer SPEC_JSON_PATH`` -- see tunehouse.contract.spec for the exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from tunehouse import storage
from tunehouse.contract.datasets import DataError, check_files, formats_for_train_mode
from tunehouse.contract.spec import (
    EXIT_DATA_INVALID,
    EXIT_FAILED,
    EXIT_NO_SPACE,
    EXIT_STOPPED,
    STOP_REQUEST_FILE,
    RunSpec,
    load_spec,
)

from .diskspace import OutOfSpace, disk_full
from .events import ErrorKind, EventWriter
from .ranks import env_rank, writer_for
from .stop import StopFlag, watch_stop_file, watch_stop_object
from .store_sync import fetch_inputs, run_log_mirror


def _check_data(spec: RunSpec) -> list[str]:
    allowed = formats_for_train_mode(spec.train_mode)
    return check_files([*spec.train_files, *spec.validation_files], allowed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tunehouse.trainer SPEC_JSON_PATH", file=sys.stderr)
        return EXIT_FAILED
    try:
        spec = _load(args[0])
    except (OSError, ValidationError, ValueError) as exc:
        return _fail(
            _fallback_writer(Path(args[0])), f"cannot read run spec {args[0]}: {exc}", "runtime", EXIT_FAILED
        )

    stop = StopFlag()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.requested = True

    # Only the main thread may install handlers; a Ray Train worker runs this in a thread of its own and
    # hears a stop through the request alone.
    in_main = threading.current_thread() is threading.main_thread()
    sigs = (signal.SIGTERM, signal.SIGINT) if in_main else ()
    previous = {sig: signal.signal(sig, on_signal) for sig in sigs}
    stop_object = storage.join(spec.storage_dir, STOP_REQUEST_FILE) if spec.storage_dir else None
    # A request left by an earlier attempt is stale: the server asks only once this trainer has spoken.
    # Rank 0 alone clears it, before it speaks: a later rank must not clear a fresh one.
    if env_rank() == 0:
        with contextlib.suppress(OSError):
            spec.stop_request_path.unlink(missing_ok=True)
            if stop_object is not None:
                storage.remove(stop_object)
    watching = [watch_stop_file(spec.stop_request_path, stop)]
    if stop_object is not None:
        watching.append(watch_stop_object(stop_object, stop))
    try:
        try:
            mirror = run_log_mirror(spec) if env_rank() == 0 else None  # rank 0 alone reports
            events = writer_for(spec.events_path, mirror=mirror)  # rank 0 alone reports
        except OSError as exc:
            reason = f"cannot write events to {spec.events_path}: {exc}"
            return _fail(EventWriter(None), reason, "runtime", EXIT_FAILED)
        with events:
            return _run(spec, events, stop)
    finally:
        for watch in watching:
            watch.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load(where: str) -> RunSpec:
    """The spec from a path, or from its URL in the artifact store (a node sharing no disk with the
    control plane)."""
    if storage.is_url(where):
        return RunSpec.model_validate_json(storage.read_bytes(where))
    return load_spec(Path(where))


def _fallback_writer(spec_path: Path) -> EventWriter:
    """Best effort: if the broken spec still names an output_dir, put the error in its log too."""
    try:
        output_dir = json.loads(spec_path.read_text(encoding="utf-8"))["output_dir"]
        return EventWriter(Path(output_dir) / "events.jsonl")
    except (OSError, ValueError, KeyError, TypeError):
        return EventWriter(None)


# Set by an executor that does not choose the devices itself (Ray): the trainer says which ones it got.
REPORT_DEVICES_ENV = "TUNEHOUSE_REPORT_DEVICES"
# Set by the Ray Train driver's workers (tunehouse.trainer.ray_train): every rank's Ray node, by rank.
WORKER_NODES_ENV = "TUNEHOUSE_WORKER_NODES"


def _run(spec: RunSpec, events: EventWriter, stop: StopFlag) -> int:
    events.status("loading")
    if spec.fetch:
        try:
            fetch_inputs(spec, events.log)
        except (OSError, RuntimeError) as exc:
            reason = f"cannot fetch the run's inputs from the artifact store: {exc}"
            return _fail(events, reason, "runtime", EXIT_FAILED)
    if os.environ.get(REPORT_DEVICES_ENV) == "1":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
        events.log(f"devices: GPUs {visible} (CUDA_VISIBLE_DEVICES)" if visible else "devices: CPU only")
    if os.environ.get(WORKER_NODES_ENV):
        ranks = json.loads(os.environ[WORKER_NODES_ENV])
        events.log("workers on Ray nodes: " + ", ".join(f"rank {r} on {n}" for r, n in enumerate(ranks)))
    if not spec.model_path.is_dir():
        return _fail(events, f"model_path {spec.model_path} is not a directory", "runtime", EXIT_FAILED)
    # Bad data must fail fast and cheaply: before the model (possibly many GB) is loaded.
    problems = _check_data(spec)
    if problems:
        return _fail(events, "invalid training data:\n" + "\n".join(problems), "data", EXIT_DATA_INVALID)
    if stop.requested:  # stopped or paused during start-up: leave before paying for torch
        events.status("stopped")
        return EXIT_STOPPED
    # Imported only now so that a data-invalid run never pays for loading torch.
    from .loop import NonFiniteLoss, run_training

    try:
        return run_training(spec, events, stop)
    except NonFiniteLoss as exc:
        return _fail(events, str(exc), "nan", EXIT_FAILED)
    except DataError as exc:
        return _fail(events, str(exc), "data", EXIT_DATA_INVALID)
    except OutOfSpace as exc:  # half-written files are already gone; earlier checkpoints are untouched
        return _fail(events, str(exc), "runtime", EXIT_NO_SPACE)
    except Exception as exc:  # any crash must still reach the server as an error event
        if disk_full(spec.output_dir, exc):
            reason = f"no space left on device under {spec.output_dir} ({type(exc).__name__}: {exc})"
            return _fail(events, reason, "runtime", EXIT_NO_SPACE)
        traceback.print_exc(file=sys.stderr)
        return _fail(events, f"{type(exc).__name__}: {exc}", "runtime", EXIT_FAILED)


def _fail(events: EventWriter, reason: str, kind: ErrorKind, code: int) -> int:
    try:
        events.error(reason, kind)
        events.status("failed")
    except OSError:
        pass  # no room even for the reason: the exit code still tells the server (EXIT_NO_SPACE)
    finally:
        with contextlib.suppress(OSError):
            events.close()  # idempotent; the fallback writers have no other owner
    return code


if __name__ == "__main__":
    sys.exit(main())
