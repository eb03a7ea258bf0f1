"""Domain errors. Dialect adapters translate each kind into their own envelope, code and HTTP status."""

from __future__ import annotations


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


class QuotaExceeded(DomainError):
    """The account is at one of its limits; the same request succeeds once something of its own ends."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit
