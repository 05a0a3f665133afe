"""Every SQL statement the tasks run, named, in one place.

Statements with fixed text are SQLAlchemy ``text()`` clauses with bound parameters.
Retention statements name a table and column known only at run time: they are
psycopg ``sql.SQL`` templates whose names are filled with ``sql.Identifier`` after
the names were checked against the catalogue; values are always bound parameters.
"""

from __future__ import annotations

from psycopg import sql
from sqlalchemy import text

# -- sent-email log ---------------------------------------------------------------------------

# Claims a task id. While the claiming transaction is open, a second delivery of the
# same task blocks on the primary key, then sees the committed row and inserts nothing.
CLAIM_SENT_EMAIL = text(
    """
    INSERT INTO pgjobs_sent_email (task_id, recipient, subject, message_id)
    VALUES (:task_id, :recipient, :subject, :message_id)
    ON CONFLICT (task_id) DO NOTHING
    RETURNING task_id
    """
)

# -- retention ------------------------------------------------------------------------------

DATABASE_NOW = text("SELECT now()")

# One row per visible relation named :table, with the type of its column :column (NULL when
# the column does not exist). Only relations on the search path are visible, as in a query.
DESCRIBE_RETENTION_TARGET = text(
    """
    SELECT n.nspname AS schema_name, c.relkind AS kind, t.typname AS column_type
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_attribute AS a
      ON a.attrelid = c.oid AND a.attname = :column AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
    WHERE c.relname = :table AND pg_catalog.pg_table_is_visible(c.oid)
    """
)

COUNT_EXPIRED = sql.SQL("SELECT count(*) FROM {table} WHERE {column} < %(cutoff)s")

# Deletes a batch of about :batch_size expired rows. ctid = ANY(ARRAY(...)) is planned as a
# TID scan, so each batch touches only the rows it deletes and holds its row locks briefly.
# The cutoff is tested again on the deleted rows: a ctid is unique only within one table, and
# in a table with inheriting children it also matches rows of the other children.
DELETE_EXPIRED_BATCH = sql.SQL(
    """
    DELETE FROM {table}
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM {table} WHERE {column} < %(cutoff)s LIMIT %(batch_size)s
    ))
    AND {column} < %(cutoff)s
    """
)
