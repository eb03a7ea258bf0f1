"""Row locks for read-decide-write steps that must not interleave (claiming vs stopping a run, counting a
tenant's runs before adding one).

PostgreSQL: ``SELECT ... FOR NO KEY UPDATE``. It excludes other lockers of the row but not the ``KEY SHARE``
lock that inserting a row which references it takes, so "insert a child, then lock the parent" in one
transaction cannot deadlock against the same sequence in another.
SQLite: a no-op write to the row, which takes the database's single write lock until commit; reads made
after it see the newest committed data. (The driver starts its transaction at the first write, so the
reads before it held nothing.)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session


def lock_row(s: Session, obj: Any) -> None:
    """Hold ``obj``'s row until the session commits, then reload ``obj`` from what is committed now."""
    table = type(obj).__table__
    s.flush()
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(table.c.id).where(table.c.id == obj.id).with_for_update(key_share=True))
    else:
        s.execute(update(table).where(table.c.id == obj.id).values(id=table.c.id))
    s.refresh(obj)
