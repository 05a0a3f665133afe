"""pgjobs beat: the recurring schedule, stored in PostgreSQL, dispatched by one leader.

The schedule lives in sqlalchemy-celery-beat's tables (created by Alembic, never at run
time). Edit it with ``pgjobs schedule`` or declare pgjobs' own entries in
:mod:`beat.schedule`; ``celery -A config beat`` runs :class:`beat.scheduler.Scheduler`.

Leader election
---------------
Any number of beat processes may run against one database; exactly one dispatches. Two
things make a leader, both held by one dedicated connection per process (not pooled, not
the schedule's sessions): a session advisory lock, and an unexpired lease row in
``pgjobs_beat_leader`` naming that connection's backend pid.

- The lock answers "is the leader's process alive?". PostgreSQL releases a session lock
  the moment its connection ends: a SIGKILLed leader's socket is closed by its kernel, so
  a standby takes the lock on its next retry (every ``standby_retry`` = 1 s); a leader cut
  off from the network is dropped by TCP keepalives and ``tcp_user_timeout`` (set on both
  ends) within about 5 s.
- The lease answers "is the leader still acting?". A process stopped by SIGSTOP, a long
  pause or a frozen VM keeps a healthy TCP session, and so its lock. So the leader renews
  its lease (``lease`` = 6 s) on every pass, and passes at least every ``renew_every`` =
  2 s. A standby that fails to take the lock looks at the lease: if the lock holder has
  no unexpired lease, the standby ends that session with ``pg_terminate_backend`` (which
  frees the lock and rolls back whatever the frozen leader had in flight), waits for it to
  exit, and takes lock and lease in one statement. A frozen leader is thus replaced within
  ``lease + standby_retry + depose_wait`` = 9 s; :class:`beat.leadership.LeaseTimes`
  refuses times that would break the 10 s promise.
- Every transaction that acts as the leader (each tick claim, each skip) first renews the
  lease with an UPDATE that matches only if this session still holds the lock *and* an
  unexpired lease. A resumed old leader's session was ended, so its claim cannot commit;
  a leader whose lease lapsed while nobody ended its session (no standby, or one without
  the right to) finds nothing to renew, steps down, closes its connection and contests
  again like any standby. Either way it sends nothing once it could have been replaced.
  (With a broker other than pgjobs' own, a message is published only after its claim
  commits; a leader frozen in that instant publishes that one claimed tick when it
  resumes: late, but still once, as its successor skips the claimed tick.)
  All lease times are the database server's clock (``now()``), so clock skew between
  hosts does not matter.
- Why both, rather than a lease alone: the lock frees itself the instant a process dies,
  so the common failover costs a second instead of a lease period; and ending the old
  session is what fences a frozen leader, since a paused process cannot be told anything.
  A lease alone would also leave a frozen leader's half-done claim holding row locks that
  block its successor.
- Ending another session needs the right to signal it: every beat must connect as the
  same database role (a non-superuser may end sessions of its own role), or its role
  must be granted ``pg_signal_backend``; sessions of a superuser can only be ended by a
  superuser. A standby without that right says so once in the log and does not take over
  until the old leader resumes and steps down by itself.
- Ticks are claimed under the unique key ``(entry name, due time)`` in
  ``pgjobs_beat_tick``, in the same transaction that persists the entry's ``last_run_at``
  (and, with pgjobs' PostgreSQL transport, that inserts the message), so no leader change
  can send a tick twice. A new leader reloads the schedule from the database and fires
  the runs its predecessor missed according to each entry's ``catch_up`` policy.
- Every change of role is logged in one line naming the process
  (``pgjobs-beat:<host>:<pid>``, also the lock connection's ``application_name``), as is
  every session a standby ends.
- A beat started on a database without its tables exits at once, saying to run
  ``pgjobs migrate``.

Never put the lock connection behind a transaction-pooling PgBouncer: session locks
need a session. The lease statements themselves are plain SQL (no session state).
"""
