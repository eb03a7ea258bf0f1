"""SQLAlchemy tables: the persistent form of the domain entities."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite hands back naive values otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Runs this tenant may have queued or training at once; None: no limit beyond the node's capacity.
    max_active_runs: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    # Deployments this tenant may hold at once (any status but DELETING); None: no limit.
    max_deployments: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class Credential(Base):
    """An AK/SK pair (secret encrypted: BCE signing needs it back) or a bearer API key (hashed)."""

    __tablename__ = "credentials"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "aksk" | "api_key"
    lookup: Mapped[str] = mapped_column(String(128), unique=True)  # access key, or sha256 of the api key
    secret_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    label: Mapped[str] = mapped_column(String(32), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Model(Base):
    """A base model (global, account_id NULL) or a fine-tuned output owned by an account."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("account_id", "name"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True, index=True)
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # "base" | "full" | "lora_adapter"
    base_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    source_run_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # A base model without a chat template: "chatml" renders conversations as ChatML, "refuse" makes chat data
    # a data error.
    chat_template_fallback: Mapped[str] = mapped_column(String(16), default="chatml", server_default="chatml")
    # A fine-tuned model its owner deleted: no longer listed, served or trained from; its name stays taken.
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class File(Base):
    __tablename__ = "files"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    rows: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    base_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    train_mode: Mapped[str | None] = mapped_column(String(32), nullable=True)
    parameter_scale: Mapped[str | None] = mapped_column(String(32), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    workspace: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("job_id", "version", name="uq_runs_job_id_version"),
        # Output names are looked up within an account (name conflicts, checkpoint model names).
        Index("ix_runs_account_id_output_name", "account_id", "output_name"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # run number within its job, from 1
    base_model: Mapped[str] = mapped_column(String(128))
    train_mode: Mapped[str] = mapped_column(String(32))
    parameter_scale: Mapped[str] = mapped_column(String(32))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    dataset: Mapped[dict[str, Any]] = mapped_column(default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(default=dict)  # dialect-opaque settings, stored and echoed
    # The model this run produces is registered under this name; held from creation so no other run takes it.
    output_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # trainer launches
    losses: Mapped[int] = mapped_column(Integer, default=0)  # trainers that vanished without a word
    resume_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    executor: Mapped[str | None] = mapped_column(String(16), nullable=True)
    handle: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Trainer events are ingested exactly once: the highest trainer seq already stored.
    last_event_seq: Mapped[int] = mapped_column(Integer, default=0)
    output_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Read-only; loaded with the run where a rendering needs both (core.runs.get_run).
    job: Mapped[Job] = relationship(viewonly=True, lazy="select")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "step"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Event(Base):
    """A run's ordered record; seq is assigned here, per run, for trainer and server events alike."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("run_id", "seq"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    time: Mapped[datetime] = mapped_column(UtcDateTime())
    type: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Deployment(Base):
    """A model or checkpoint loaded by a serving engine for one account, called by its endpoint name."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("account_id", "endpoint", name="uq_deployments_account_endpoint"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # What was asked for, in the caller's terms (a model name or a checkpoint's model id).
    model_name: Mapped[str] = mapped_column(String(160))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"), nullable=True)
    base_model: Mapped[str] = mapped_column(String(128))
    base_path: Mapped[str] = mapped_column(Text)
    # Weights over the base: a PEFT adapter dir or full weights; None serves the base itself.
    weights_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    weights_kind: Mapped[str] = mapped_column(String(16))  # "base" | "full" | "lora_adapter"
    engine: Mapped[str] = mapped_column(String(16))
    capacity: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16), index=True)
    endpoint: Mapped[str] = mapped_column(String(160))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class PublishedModel(Base):
    """A trained run's output (or one checkpoint of it) published as a version of a named model set, as
    Qianfan publishes a task's model before it can be served. Versions of one set share `set_key`."""

    __tablename__ = "published_models"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(16), unique=True)
    set_key: Mapped[str] = mapped_column(String(16), index=True)
    set_name: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: the run's final output
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
