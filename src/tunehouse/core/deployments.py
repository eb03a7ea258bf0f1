"""Deployments: a model or checkpoint loaded by a serving engine, owned by one account, called by name.

Lifecycle: PENDING → DEPLOYING → RUNNING → (FAILED | STOPPED | DELETING → gone). A failed or stopped
deployment may be deployed again; a running one whose engine died goes back to DEPLOYING while it restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from tunehouse.core.clock import utcnow
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound, QuotaExceeded
from tunehouse.core.ids import new_key
from tunehouse.core.registry import resolve_base, run_by_output_name
from tunehouse.store.locks import lock_row
from tunehouse.store.models import Account, Checkpoint, Deployment, Model

ENGINES = ("transformers", "vllm")
MAX_CAPACITY = 64


class DeploymentStatus(StrEnum):
    PENDING = "PENDING"
    DEPLOYING = "DEPLOYING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    DELETING = "DELETING"


S = DeploymentStatus
_ALLOWED: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.DEPLOYING, S.FAILED, S.STOPPED, S.DELETING}),
    S.DEPLOYING: frozenset({S.RUNNING, S.FAILED, S.STOPPED, S.DELETING}),
    # RUNNING → DEPLOYING: its engine died and is being restarted.
    S.RUNNING: frozenset({S.DEPLOYING, S.FAILED, S.STOPPED, S.DELETING}),
    S.FAILED: frozenset({S.DEPLOYING, S.DELETING}),
    S.STOPPED: frozenset({S.DEPLOYING, S.DELETING}),
    S.DELETING: frozenset(),  # only forgetting the row follows
}
# Statuses in which an engine is (or is about to be) holding memory for the deployment.
LIVE = frozenset({S.PENDING, S.DEPLOYING, S.RUNNING})


def can_move(current: str, target: DeploymentStatus) -> bool:
    return target in _ALLOWED[DeploymentStatus(current)]


def check_move(current: str, target: DeploymentStatus) -> DeploymentStatus:
    if not can_move(current, target):
        raise Conflict(f"deployment is {current}; it cannot become {target}")
    return target


@dataclass(frozen=True)
class ServingTarget:
    """What an engine loads: a base model's directory, and optionally weights over it."""

    model_name: str
    base_model: str
    base_path: str
    weights_path: str | None
    weights_kind: str  # "base" | "full" | "lora_adapter"
    model_id: int | None = None
    checkpoint_id: int | None = None


def resolve_model_target(s: Session, account_id: int, name: str) -> ServingTarget | None:
    """A base model or one of the account's own fine-tuned models by name; None when neither exists."""
    own = s.scalar(
        select(Model).where(Model.account_id == account_id, Model.name == name, Model.deleted_at.is_(None))
    )
    if own is not None:
        base = resolve_base(s, own.base_model or "")
        return ServingTarget(name, base.name, base.path, own.path, own.kind, model_id=own.id)
    base_row = s.scalar(select(Model).where(Model.account_id.is_(None), Model.name == name))
    if base_row is None:
        return None
    return ServingTarget(name, base_row.name, base_row.path, None, "base", model_id=base_row.id)


def resolve_checkpoint_target(
    s: Session, account_id: int, name: str, output_name: str, step: int
) -> ServingTarget | None:
    """Step `step` of the account's run that produces (or produced) `output_name`; None when there is none."""
    run = run_by_output_name(s, account_id, output_name)
    if run is None:
        return None
    ckpt = s.scalar(select(Checkpoint).where(Checkpoint.run_id == run.id, Checkpoint.step == step))
    if ckpt is None:
        return None
    base = resolve_base(s, run.base_model)
    kind = "lora_adapter" if run.parameter_scale == "lora" else "full"
    return ServingTarget(name, base.name, base.path, ckpt.path, kind, checkpoint_id=ckpt.id)


def create_deployment(
    s: Session,
    account_id: int,
    target: ServingTarget,
    endpoint: str,
    engine: str | None = None,
    capacity: int = 1,
) -> Deployment:
    if engine is None:  # the serving layer's choice for this machine (vLLM where it runs)
        from tunehouse.serving.selection import default_engine

        engine = default_engine()
    if engine not in ENGINES:
        raise InvalidParameter("engine", f"unknown engine {engine!r}; available: {', '.join(ENGINES)}")
    check_capacity(capacity)
    if s.scalar(
        select(Deployment.id).where(Deployment.account_id == account_id, Deployment.endpoint == endpoint)
    ):
        raise Conflict(f"Model instance {endpoint} already exists, please specify a suffix")
    check_deployment_limit(s, account_id)
    now = utcnow()
    dep = Deployment(
        key=new_key(),
        account_id=account_id,
        model_name=target.model_name,
        model_id=target.model_id,
        checkpoint_id=target.checkpoint_id,
        base_model=target.base_model,
        base_path=target.base_path,
        weights_path=target.weights_path,
        weights_kind=target.weights_kind,
        engine=engine,
        capacity=capacity,
        status=S.PENDING,
        endpoint=endpoint,
        requests=0,
        created_at=now,
        updated_at=now,
    )
    s.add(dep)
    s.flush()
    return dep


def check_deployment_limit(s: Session, account_id: int) -> None:
    """Refuse one more deployment when the account already holds as many as its limit allows.

    Every record but a DELETING one counts, stopped and failed included: deleting one makes room.
    """
    # As for runs: the account's row lock makes concurrent creates take turns, so each counts the others.
    account = s.get_one(Account, account_id)
    lock_row(s, account)
    limit = account.max_deployments
    if limit is None:
        return
    held = s.scalar(
        select(func.count())
        .select_from(Deployment)
        .where(Deployment.account_id == account_id, Deployment.status != S.DELETING)
    )
    if (held or 0) >= limit:
        raise QuotaExceeded(
            f"Too many deployments: this account may hold {limit} at once and has {held}. "
            "Delete one to deploy another.",
            limit,
        )


def check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidParameter(
            "capacity", f"Invalid capacity ({capacity}): an integer from 1 to {MAX_CAPACITY}"
        )
    return capacity


def get_deployment(s: Session, account_id: int, endpoint: str) -> Deployment:
    """The account's own deployment by endpoint name; another account's is not found."""
    dep = s.scalar(
        select(Deployment).where(Deployment.account_id == account_id, Deployment.endpoint == endpoint)
    )
    if dep is None:
        raise NotFound("deployment", endpoint)
    return dep


def deployment_by_key(s: Session, key: str) -> Deployment | None:
    return s.scalar(select(Deployment).where(Deployment.key == key))


def deleting_keys(s: Session) -> list[str]:
    return list(s.scalars(select(Deployment.key).where(Deployment.status == S.DELETING)))


def existing_keys(s: Session, keys: list[str]) -> set[str]:
    if not keys:
        return set()
    return set(s.scalars(select(Deployment.key).where(Deployment.key.in_(keys))))


def list_deployments(s: Session, account_id: int) -> list[Deployment]:
    return list(
        s.scalars(select(Deployment).where(Deployment.account_id == account_id).order_by(Deployment.id))
    )


def move(s: Session, dep: Deployment, target: DeploymentStatus, error: str | None = None) -> None:
    dep.status = check_move(dep.status, target)
    dep.updated_at = utcnow()
    if target == S.FAILED:
        dep.error = error or "the engine failed"
    elif target in (S.DEPLOYING, S.RUNNING):
        dep.error = None


def request_delete(s: Session, dep: Deployment) -> None:
    """Mark it DELETING (idempotent); the supervisor frees its engine, then `forget` removes the record."""
    if dep.status != S.DELETING:
        move(s, dep, S.DELETING)


def forget(s: Session, dep: Deployment) -> None:
    if dep.status != S.DELETING:
        raise Conflict(f"deployment is {dep.status}; only a DELETING one is removed")
    s.delete(dep)
    s.flush()


def deployment_for_model(s: Session, account_id: int, target: ServingTarget) -> Deployment:
    """The deployment named after the model (OpenAI has no deploy step: one is made on first use)."""
    dep = s.scalar(
        select(Deployment).where(
            Deployment.account_id == account_id, Deployment.endpoint == target.model_name
        )
    )
    if dep is None:
        dep = create_deployment(s, account_id, target, endpoint=target.model_name)
    return dep


class DeploymentExists(Conflict):
    """The account already has a deployment under that endpoint name (dialects answer their own 409)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(f"Model instance {endpoint} already exists, please specify a suffix")
        self.endpoint = endpoint


def endpoint_name(model_name: str, suffix: str | None) -> str:
    """A deployment's endpoint: the model's name, with `-suffix` when one is given (DashScope's rule)."""
    return f"{model_name}-{suffix}" if suffix else model_name


def deploy_named(
    s: Session, account_id: int, target: ServingTarget, endpoint: str, capacity: int = 1
) -> Deployment:
    """A new deployment under `endpoint`; DeploymentExists when the account already has one there."""
    check_capacity(capacity)
    if find_deployment(s, account_id, endpoint) is not None:
        raise DeploymentExists(endpoint)
    return create_deployment(s, account_id, target, endpoint=endpoint, capacity=capacity)


def find_deployment(s: Session, account_id: int, endpoint: str) -> Deployment | None:
    """The account's own deployment by endpoint name, or None (another account's is never found)."""
    return s.scalar(
        select(Deployment).where(Deployment.account_id == account_id, Deployment.endpoint == endpoint)
    )


def scale_deployment(s: Session, dep: Deployment, capacity: int) -> int:
    """Set how many requests it serves at once; returns the previous capacity. Not while being deleted."""
    check_capacity(capacity)
    if dep.status == S.DELETING:
        raise Conflict(f"deployment is {dep.status}; it cannot be scaled")
    previous = dep.capacity
    dep.capacity = capacity
    dep.updated_at = utcnow()
    return previous


def count_deployments(s: Session, account_id: int) -> int:
    return int(s.scalar(select(func.count()).where(Deployment.account_id == account_id)) or 0)


def page_deployments(s: Session, account_id: int, offset: int, limit: int) -> list[Deployment]:
    return list(
        s.scalars(
            select(Deployment)
            .where(Deployment.account_id == account_id)
            .order_by(Deployment.id.desc())
            .offset(offset)
            .limit(limit)
        )
    )
def get_deployment_by_key(s: Session, account_id: int, key: str) -> Deployment:
    """The account's own deployment by its key; another account's is not found."""
    dep = s.scalar(select(Deployment).where(Deployment.account_id == account_id, Deployment.key == key))
    if dep is None:
        raise NotFound("deployment", key)
    return dep


def deployments_query(account_id: int) -> Select[tuple[Deployment]]:
    """The account's deployments, for paging."""
    return select(Deployment).where(Deployment.account_id == account_id)
