"""Domain errors. Dialect adapters translate each kind into their own envelope, code and HTTP status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


class DomainError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(DomainError):
    """A request value breaks a rule; `field` names it in the caller's terms where the adapter can."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidInput(InvalidParameter):
    """Input refused before a dialect read it (limits, NUL text); `field` is in the caller's terms already."""


class NotFound(DomainError):
    def __init__(self, resource: str, ident: str | int) -> None:
        super().__init__(f"{resource} {ident} not found")
        self.resource = resource
        self.ident = ident


class Conflict(DomainError):
    """The entity's current state does not allow the operation."""


class NameTaken(Conflict):
    """An output model name is already a base model's, one of the account's models', or held by a live run."""

    def __init__(self, name: str) -> None:
        super().__init__(f"Model name {name} already exists, please specify another name")
        self.name = name


@dataclass(frozen=True)
class RunRef:
    """A run named in an error: plain values, readable after the session that found it has closed."""

    key: str
    created_at: datetime


class FileInUse(Conflict):
    """A file that runs which have not ended train on; dialects name those runs in their own ids."""

    def __init__(self, file_key: str, runs: list[RunRef]) -> None:
        keys = ", ".join(r.key for r in runs)
        super().__init__(f"file {file_key} is used by runs that have not ended ({keys}); stop them first")
        self.runs = runs


class QuotaExceeded(DomainError):
    """The account is at one of its limits; the same request succeeds once something of its own ends."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit
