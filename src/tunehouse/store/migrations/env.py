"""Alembic environment: runs on the connection handed over by tunehouse.store.db.migrate."""

from alembic import context
from sqlalchemy import create_engine

from tunehouse.store.models import Base

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # `alembic revision --autogenerate` from the command line
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
