"""Alembic environment, run by `maskgate db ...` (see maskgate.store.migrate).

The caller hands over an open connection in ``config.attributes["connection"]``;
SQLite runs in batch mode because it cannot ALTER most things in place.
"""

from alembic import context

from maskgate.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
