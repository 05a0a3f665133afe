-- `pgjobs grant ROLE`: the statements that give a runtime role what pgjobs needs, and the
-- catalogue reads around them. Parsed once by config/grants.py, which holds the plan (which
-- privileges on which table or sequence). Values are bound parameters; the role, the schema
-- and the relations fill the {slots} as psycopg.sql.Identifier, never as text.

-- name: pgjobs_schema
-- Where the pgjobs tables are (the schema `pgjobs migrate` created them in, found on this
-- session's search path), who owns them, whether this session may grant on them, and the
-- session's role.
SELECT n.nspname, pg_get_userbyid(c.relowner), pg_has_role(current_user, c.relowner, 'USAGE'),
       current_user
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('pgjobs_broker_message');

-- name: pgjobs_schema_unusable
-- A schema holding the pgjobs tables that this session's role may not use (no USAGE), and
-- the role: the search path skips such a schema, so pgjobs_schema finds no tables there.
SELECT n.nspname, current_user
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = 'pgjobs_broker_message' AND c.relkind IN ('r', 'p')
  AND NOT has_schema_privilege(n.oid, 'USAGE')
ORDER BY 1
LIMIT 1;

-- name: role_standing
-- What the role could do whatever pgjobs grants it: superuser, member of the tables' owner
-- (and so able to alter or drop them), CREATE in their schema (PUBLIC had it before
-- PostgreSQL 15). No row: the role does not exist.
SELECT r.rolsuper,
       r.rolname = pg_get_userbyid(c.relowner) AS is_owner,
       pg_has_role(r.oid, c.relowner, 'USAGE') AS acts_as_owner,
       has_schema_privilege(r.oid, c.relnamespace, 'CREATE') AS can_create
FROM pg_roles r, pg_class c
WHERE r.rolname = %(role)s AND c.oid = to_regclass('pgjobs_broker_message');

-- name: serialise
-- Keys "pgjo", "gran": two release phases granting at once would otherwise fail on
-- "tuple concurrently updated".
SELECT pg_advisory_xact_lock(1885825647, 1735549294);

-- name: grant_schema
GRANT USAGE ON SCHEMA {schema} TO {role};

-- name: grant_tables
GRANT {privileges} ON TABLE {relations} TO {role};

-- name: grant_sequences
-- USAGE allows nextval() (the serial and sequence defaults); identity columns need nothing.
GRANT USAGE ON SEQUENCE {relations} TO {role};

-- name: grant_signal_backend
-- Lets the role end any non-superuser session of the cluster (pg_terminate_backend): only
-- beats that connect as different roles need it to depose a frozen leader.
GRANT pg_signal_backend TO {role};

-- name: granted_roles
-- Roles other than the owner that hold a privilege on a pgjobs table: those `pgjobs grant`
-- was run for (PUBLIC, grantee 0, has no pg_roles row).
SELECT DISTINCT r.rolname
FROM pg_class c
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
JOIN pg_roles r ON r.oid = a.grantee
WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = %(schema)s)
  AND c.relname = ANY(%(tables)s::text[])
  AND a.grantee <> c.relowner
ORDER BY 1;

-- name: missing_privileges
-- The (relation, privilege) pairs of the plan the role lacks, directly or through a role it
-- belongs to. A relation the database lacks (not migrated yet) counts as missing, and says so
-- in "absent".
SELECT p.relation, p.privilege, found.oid IS NULL AS absent
FROM unnest(%(relations)s::text[], %(privileges)s::text[], %(sequence)s::bool[])
     AS p (relation, privilege, is_sequence)
CROSS JOIN LATERAL (SELECT to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(p.relation))
                    AS oid) AS found
WHERE found.oid IS NULL
   OR NOT CASE WHEN p.is_sequence THEN has_sequence_privilege(%(role)s, found.oid, p.privilege)
               ELSE has_table_privilege(%(role)s, found.oid, p.privilege) END
ORDER BY 1, 2;
