"""Alembic environment: runs pgjobs' migrations on the connection ``config.migrate`` hands in."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
