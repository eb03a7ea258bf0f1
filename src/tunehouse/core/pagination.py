"""Marker pagination over creation order: the marker is the key of the first item to return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

from tunehouse.core.errors import InvalidParameter

T = TypeVar("T")
MAX_PAGE = 100


@dataclass
class Page(Generic[T]):
    items: list[T]
    marker: str
    max_keys: int
    is_truncated: bool
    next_marker: str | None


def marker_page(
    s: Session, query: Select[Any], entity: Any, marker: str, max_keys: int, reverse: bool
) -> Page[Any]:
    """`query` selects `entity` rows already filtered to what the caller may see; `marker` is a key."""
    if max_keys <= 0:
        raise InvalidParameter("maxKeys", "must be at least 1")
    size = min(max_keys, MAX_PAGE)
    if marker:
        start = s.scalar(query.where(entity.key == marker))
        if start is None:
            raise InvalidParameter("marker", f"unknown marker {marker!r}")
        query = query.where(entity.id <= start.id if reverse else entity.id >= start.id)
    query = query.order_by(entity.id.desc() if reverse else entity.id.asc()).limit(size + 1)
    rows = list(s.scalars(query))
    truncated = len(rows) > size
    return Page(
        items=rows[:size],
        marker=marker,
        max_keys=size,
        is_truncated=truncated,
        next_marker=rows[size].key if truncated else None,
    )
