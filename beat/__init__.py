"""pgjobs beat: the recurring schedule, stored in PostgreSQL, dispatched by one leader.

The schedule lives in sqlalchemy-celery-beat's tables (created by Alembic, never at run
time). Edit it with ``pgjobs schedule`` or declare pgjobs' own entries in
:mod:`beat.schedule`; ``celery -A config beat`` runs :class:`beat.scheduler.Scheduler`.

Leader election
---------------
Any number of beat processes may run against one database; exactly one dispatches.

- Each process opens one dedicated connection (not pooled, not the schedule's sessions)
  and calls ``pg_try_advisory_lock`` on it: the process that gets the lock is the leader,
  the others are standbys and retry every second (``STANDBY_RETRY``).
- The lock is a *session* lock: PostgreSQL releases it the moment that connection ends.
  A SIGKILLed leader's socket is closed by its kernel, so the lock is free at once; a
  leader cut off from the network is dropped by TCP keepalives and ``tcp_user_timeout``
  (set on both ends of the connection) within about 5 s. A standby then takes over on
  its next retry: well under 10 s in both cases.
- The leader proves it still holds the lock before each pass, and again inside the very
  transaction that claims each tick (a query on ``pg_locks`` over the lock connection).
  A leader whose connection died cannot commit a claim, so it stops dispatching before a
  successor can start. It logs one line, closes the connection and becomes a standby.
- Ticks are claimed under the unique key ``(entry name, due time)`` in
  ``pgjobs_beat_tick``, in the same transaction that persists the entry's ``last_run_at``
  (and, with pgjobs' PostgreSQL transport, that inserts the message), so no leader change
  can send a tick twice. A new leader reloads the schedule from the database and fires
  the runs its predecessor missed according to each entry's ``catch_up`` policy.
- Every change of role is logged in one line naming the process
  (``pgjobs-beat:<host>:<pid>``, also the lock connection's ``application_name``).

Never put the lock connection behind a transaction-pooling PgBouncer: session locks
need a session.
"""
