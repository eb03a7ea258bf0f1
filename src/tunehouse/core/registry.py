"""The model registry: base models (name → a Hugging Face directory, local or in an object store) and
fine-tuned outputs (in the artifact store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tunehouse import storage
from tunehouse.core.catalog import TINY_MODEL
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import InvalidParameter, NameTaken, NotFound
from tunehouse.core.states import TERMINAL
from tunehouse.store.models import Account, Model, Run


def register_builtin(s: Session, models_dir: Path) -> Model:
    """tunehouse-tiny is always registered; its files are built on first use (trainer.tiny)."""
    row = s.scalar(select(Model).where(Model.account_id.is_(None), Model.name == TINY_MODEL))
    if row is None:
        row = Model(
            account_id=None,
            name=TINY_MODEL,
            path=str(models_dir / TINY_MODEL),
            kind="base",
            created_at=utcnow(),
        )
        s.add(row)
        s.flush()
    return row


CHAT_TEMPLATE_FALLBACKS = ("chatml", "refuse")


def add_base_model(
    s: Session, name: str, path: Path | str, chat_template_fallback: str = "chatml"
) -> Model:
    """Register (or re-point) a base model: a local directory, or an ``s3://`` one that each node copies
    once into its cache before training on it. ``chat_template_fallback`` says what a model without a chat
    template does with conversations: render them as ChatML (with a warning in the run's log) or refuse."""
    if storage.is_url(path):
        path = str(path).rstrip("/")
        try:
            found = storage.isfile(storage.join(path, "config.json"))
        except OSError as exc:
            raise InvalidParameter("path", f"cannot read {path}: {exc}") from None
        if not found:
            raise InvalidParameter("path", f"{path} is not a Hugging Face model directory (no config.json)")
    else:
        path = Path(path).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise InvalidParameter("path", f"{path} is not a Hugging Face model directory (no config.json)")
    if name == TINY_MODEL:
        raise InvalidParameter("name", f"{TINY_MODEL} is built in")
    if chat_template_fallback not in CHAT_TEMPLATE_FALLBACKS:
        raise InvalidParameter(
            "chat_template_fallback", f"must be one of {', '.join(CHAT_TEMPLATE_FALLBACKS)}"
        )
    row = s.scalar(select(Model).where(Model.account_id.is_(None), Model.name == name))
    if row is None:
        row = Model(account_id=None, name=name, path=str(path), kind="base", created_at=utcnow())
        s.add(row)
    else:
        row.path = str(path)
    row.chat_template_fallback = chat_template_fallback
    s.flush()
    return row


def visible_models(s: Session, account_id: int | None) -> list[Model]:
    """Base models plus the account's own fine-tuned ones, base models first."""
    cond = (
        Model.account_id.is_(None)
        if account_id is None
        else or_(Model.account_id.is_(None), Model.account_id == account_id)
    )
    q = select(Model).where(cond, Model.deleted_at.is_(None))
    return list(s.scalars(q.order_by(Model.account_id.is_not(None), Model.id)))


def base_models(s: Session) -> list[Model]:
    return list(s.scalars(select(Model).where(Model.kind == "base").order_by(Model.id)))


def resolve_base(s: Session, name: str, field: str = "model") -> Model:
    row = s.scalar(select(Model).where(Model.account_id.is_(None), Model.name == name))
    if row is None:
        names = ", ".join(m.name for m in base_models(s))
        raise InvalidParameter(field, f"unknown model {name!r}; available: {names}")
    return row


@dataclass(frozen=True)
class ResolvedModel:
    """What a run trains: the root base model, plus starting weights when continuing a fine-tuned one."""

    requested: str
    base: Model
    init_from: dict[str, str] | None = None


def resolve_model(s: Session, account_id: int, name: str, field: str = "model") -> ResolvedModel:
    """A base model by name, or one of the account's own fine-tuned outputs (continued training)."""
    own = s.scalar(
        select(Model).where(Model.account_id == account_id, Model.name == name, Model.deleted_at.is_(None))
    )
    if own is None:
        return ResolvedModel(name, resolve_base(s, name, field))
    return ResolvedModel(
        name, resolve_base(s, own.base_model or "", field), {"path": own.path, "kind": own.kind}
    )


def check_output_name(s: Session, account_id: int, name: str) -> None:
    """A run's output name must not be a base model's (a caller naming a model would get the wrong one),
    one of the account's own models', or held by one of its runs that has not ended yet."""
    model = s.scalar(
        select(Model.id).where(
            Model.name == name, or_(Model.account_id.is_(None), Model.account_id == account_id)
        )
    )
    live = s.scalar(
        select(Run.id).where(
            Run.account_id == account_id,
            Run.output_name == name,
            Run.deleted_at.is_(None),
            Run.state.not_in([st.value for st in TERMINAL]),
        )
    )
    if model is not None or live is not None:
        raise NameTaken(name)


def run_by_output_name(s: Session, account_id: int, name: str) -> Run | None:
    """The account's (not deleted) run that produces or produced the model of that name; newest first."""
    return s.scalar(
        select(Run)
        .where(Run.account_id == account_id, Run.output_name == name, Run.deleted_at.is_(None))
        .order_by(Run.id.desc())
        .limit(1)
    )


def register_output(
    s: Session, account_id: int, name: str, path: str, kind: str, base_model: str, run_id: int
) -> Model:
    row = Model(
        account_id=account_id,
        name=name,
        path=path,
        kind=kind,
        base_model=base_model,
        source_run_id=run_id,
        created_at=utcnow(),
    )
    s.add(row)
    s.flush()
    return row


def all_models(s: Session) -> list[tuple[Model, str | None]]:
    """Every model with its owning account's name (None for base models): the operator's view."""
    rows = s.execute(
        select(Model, Account.name)
        .outerjoin(Account, Model.account_id == Account.id)
        .order_by(Model.account_id.is_not(None), Model.id)
    )
    return [(m, name) for m, name in rows]


def get_model(s: Session, account_id: int, model_id: int) -> Model:
    """A base model or one of the account's own outputs, by id (e.g. a run's output_model_id)."""
    row = s.scalar(
        select(Model).where(
            Model.id == model_id, or_(Model.account_id.is_(None), Model.account_id == account_id)
        )
    )
    if row is None:
        raise NotFound("model", model_id)
    return row


def delete_output(s: Session, account_id: int, name: str) -> Model:
    """The owner deletes a fine-tuned model: it is no longer listed, served or trained from. Base models
    are the operator's, not a tenant's to delete."""
    row = s.scalar(
        select(Model).where(Model.account_id == account_id, Model.name == name, Model.deleted_at.is_(None))
    )
    if row is None:
        if s.scalar(select(Model.id).where(Model.account_id.is_(None), Model.name == name)) is not None:
            raise InvalidParameter("model", f"{name} is a base model; only fine-tuned models can be deleted")
        raise NotFound("model", name)
    row.deleted_at = utcnow()
    s.flush()
    return row
