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
# A row is "sending" while lease_until is set (its lease_holder may send until then), and
# "sent" once lease_until is NULL. Rows written by releases before the lease columns
# existed have NULL there: they were committed after the send, so "sent" is right for them.
# Every statement runs in a transaction of its own, never across the SMTP exchange.

# Takes the lease: a new row, or a row whose lease lapsed (its holder died mid-send). A row
# being inserted by a concurrent claim makes this wait for that claim's short transaction.
CLAIM_SENT_EMAIL = text(
    """
    INSERT INTO pgjobs_sent_email AS e
      (task_id, recipient, subject, message_id, lease_holder, lease_until)
    VALUES (:task_id, :recipient, :subject, :message_id, :holder,
            now() + make_interval(secs => :lease_seconds))
    ON CONFLICT (task_id) DO UPDATE
      SET recipient = EXCLUDED.recipient, subject = EXCLUDED.subject,
          message_id = EXCLUDED.message_id, lease_holder = EXCLUDED.lease_holder,
          lease_until = EXCLUDED.lease_until, sent_at = now()
      WHERE e.lease_until < now()
    RETURNING task_id
    """
)

# Why a claim was not granted: already sent, or how long another holder's lease still runs.
SENT_EMAIL_STATE = text(
    """
    SELECT lease_until IS NULL AS sent,
           greatest(extract(epoch FROM lease_until - now()), 0)::float8 AS seconds_left
    FROM pgjobs_sent_email
    WHERE task_id = :task_id
    """
)

# Only the holder may mark its row sent, even after its lease lapsed, unless another
# delivery took the lease over meanwhile. lease_holder stays: it names who sent the email.
MARK_EMAIL_SENT = text(
    """
    UPDATE pgjobs_sent_email SET lease_until = NULL, sent_at = now()
    WHERE task_id = :task_id AND lease_holder = :holder AND lease_until IS NOT NULL
    RETURNING task_id
    """
)

# Gives the lease back after a failed exchange, so that the task's retry may send.
RELEASE_SENT_EMAIL = text(
    """
    DELETE FROM pgjobs_sent_email
    WHERE task_id = :task_id AND lease_holder = :holder AND lease_until IS NOT NULL
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
