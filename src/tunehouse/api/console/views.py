"""What the console's pages show, computed from core rows: pure functions, no HTTP and no queries."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from tunehouse.contract.hyperparameters import TINY_MODEL, rules
from tunehouse.core import catalog
from tunehouse.core.events import TRAINER_STATUS
from tunehouse.core.states import TERMINAL, RunState
from tunehouse.store.models import Checkpoint, Event, Model, Run

# Event types that are charted rather than listed in the log.
CHART_TYPES = frozenset({"metrics", "progress"})
CHART_KEYS = ("train_loss", "eval_loss", "learning_rate", "tokens_per_second")


def fmt_time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        return "—"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def fmt_num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def plain(value: float) -> str:
    """A number as a form value: no digit grouping, integers without a decimal point."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def actions_for(state: str) -> dict[str, bool]:
    """Which buttons a run in this state offers (the core still decides; these only hide dead ends)."""
    st = RunState(state)
    return {
        "stop": st not in TERMINAL and st != RunState.STOPPING,
        "pause": st in (RunState.RUNNING, RunState.QUEUED),
        "resume": st == RunState.PAUSED,
    }


def event_summary(type_: str, payload: dict[str, Any]) -> str:
    """One readable line per event for the log."""
    if type_ == "status":
        text = f"state → {payload.get('state', '?')}"
        return text + (f": {payload['error']}" if payload.get("error") else "")
    if type_ == TRAINER_STATUS:
        return f"trainer: {payload.get('state', '?')}"
    if type_ == "log":
        return str(payload.get("message", ""))
    if type_ == "checkpoint":
        metrics = ", ".join(f"{k} {fmt_num(v)}" for k, v in (payload.get("metrics") or {}).items())
        return f"checkpoint at step {payload.get('step', '?')}" + (f" ({metrics})" if metrics else "")
    if type_ == "checkpoint_deleted":
        return f"checkpoint at step {payload.get('step', '?')} removed (keep-last limit)"
    if type_ == "model":
        return f"model saved ({payload.get('kind', '?')}): {payload.get('path', '')}"
    if type_ == "error":
        return f"error ({payload.get('kind', 'error')}): {payload.get('reason', '')}"
    return ", ".join(f"{k}={v}" for k, v in payload.items())


def log_item(ev: Event) -> dict[str, Any]:
    return {
        "seq": ev.seq,
        "time": ev.time.isoformat(),
        "time_text": ev.time.strftime("%H:%M:%S"),
        "type": ev.type,
        "text": event_summary(ev.type, dict(ev.payload or {})),
    }


def chart_point(ev: Event) -> dict[str, Any] | None:
    """The charted numbers of a metrics or progress event, keyed by step."""
    if ev.type not in CHART_TYPES:
        return None
    payload = ev.payload or {}
    point: dict[str, Any] = {"step": payload.get("step")}
    for k in CHART_KEYS:
        v = payload.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            point[k] = v
    return point if isinstance(point["step"], int) and len(point) > 1 else None


def client_event(ev: Event) -> dict[str, Any]:
    """An event as the run page's script takes it, over SSE or embedded in the page."""
    return {
        "seq": ev.seq,
        "type": ev.type,
        "payload": dict(ev.payload or {}),
        "point": chart_point(ev),
        "log": None if ev.type in CHART_TYPES else log_item(ev),
    }


def checkpoint_row(c: Checkpoint) -> dict[str, Any]:
    return {
        "step": c.step,
        "path": c.path,
        "metrics": {k: fmt_num(v) for k, v in (c.metrics or {}).items()},
        "created": fmt_time(c.created_at),
    }


def output_model_view(m: Model | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {"name": m.name, "kind": m.kind, "path": m.path, "base_model": m.base_model or ""}


def run_snapshot(run: Run, output: Model | None) -> dict[str, Any]:
    """The run's headline numbers: rendered into the page and pushed again over SSE as they change."""
    metrics = dict(run.metrics or {})
    return {
        "key": run.key,
        "state": run.state,
        "terminal": RunState(run.state) in TERMINAL,
        "step": run.step,
        "total_steps": run.total_steps,
        "progress": run.progress,
        "tokens_per_second": fmt_num(metrics.get("tokens_per_second")),
        "eta": fmt_duration(metrics.get("eta_seconds")) if run.state == RunState.RUNNING else "—",
        "train_loss": fmt_num(metrics.get("train_loss")),
        "eval_loss": fmt_num(metrics.get("eval_loss")),
        "error": run.error or "",
        "finished_at": fmt_time(run.finished_at),
        "actions": actions_for(run.state),
        "output_model": output_model_view(output),
    }


# A knob's type is the same on every model, so the form's fields parse without knowing the model.
_KNOB_TYPES = {r.key: r.type for r in rules(TINY_MODEL)}


def capabilities_spec(model_names: dict[str, str]) -> dict[str, Any]:
    """Per selectable model name (→ its root base): every mode/method's hyperparameters with ranges."""
    spec: dict[str, Any] = {}
    for name, base in model_names.items():
        caps = catalog.capabilities(base)
        spec[name] = {
            mode: {
                method: [
                    {
                        "key": p.key,
                        "type": p.type,
                        "check_type": p.check_type,
                        "check_value": list(p.check_value),
                        "default": p.default,
                    }
                    for p in params
                ]
                for method, params in methods.items()
            }
            for mode, methods in caps.modes.items()
        }
    return spec


def choice(value: Any) -> str:
    """A bool or string choice as a form value: true/false, as JSON writes them and run_form.js reads them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def setting(value: Any) -> str:
    """A run's resolved hyperparameter for its settings table: module lists comma-separated."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return choice(value)


def hp_step(p: dict[str, Any]) -> str:
    return "1" if p["type"] == "int" else "any"


def parse_hyperparameters(form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """`hp.<key>` form fields → values of each knob's type; blanks mean "the default". Returns (values,
    per-field errors)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, raw in form.items():
        if not name.startswith("hp.") or not raw.strip():
            continue
        key = name[3:]
        text = raw.strip()
        kind = _KNOB_TYPES.get(key)
        if kind == "bool":
            if text not in ("true", "false"):
                errors[key] = "must be true or false"
            else:
                values[key] = text == "true"
            continue
        if kind in ("str", "modules"):
            values[key] = text  # the catalog checks the choice, or splits the module names
            continue
        try:
            number = float(text)
        except ValueError:
            errors[key] = "must be a number"
            continue
        values[key] = int(number) if number.is_integer() and "." not in text and "e" not in text else number
    return values, errors


def lineage(model: Model, runs_by_id: dict[int, Run], own_by_name: dict[str, Model]) -> list[dict[str, str]]:
    """From a fine-tuned model back to its root base: model ← run ← (model or checkpoint ←) … ← base."""
    runs_by_key = {r.key: r for r in runs_by_id.values()}
    own_by_id = {m.id: m for m in own_by_name.values()}
    chain: list[dict[str, str]] = []
    seen: set[int] = set()
    current: Model | None = model
    base = model.base_model or model.name
    while current is not None and current.kind != "base" and current.id not in seen:
        seen.add(current.id)
        chain.append({"kind": "model", "name": current.name})
        run = runs_by_id.get(current.source_run_id or -1)
        if run is None:
            break
        base = run.base_model
        chain.append({"kind": "run", "name": run.key, "detail": f"{run.parameter_scale} {run.train_mode}"})
        source = str(((run.extra or {}).get("init_from") or {}).get("source", ""))
        current = None
        if source.startswith("model:"):
            current = own_by_name.get(source[len("model:") :])
        elif source.startswith("run:"):
            # Continued from another run: its output model when that is what was used, else a checkpoint.
            ref = source[len("run:") :]
            parent = runs_by_key.get(ref.split("@")[0])
            if "@" in ref or parent is None or parent.output_model_id is None:
                chain.append({"kind": "checkpoint", "name": ref})
                if parent is not None:
                    chain.append({"kind": "run", "name": parent.key, "detail": parent.parameter_scale})
            else:
                current = own_by_id.get(parent.output_model_id)
    if model.kind != "base":
        chain.append({"kind": "base", "name": base})
    return chain
