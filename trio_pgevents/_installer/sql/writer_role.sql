DO {tag_open}
DECLARE
    r record;
BEGIN
    IF NOT (SELECT a.rolsuper FROM pg_catalog.pg_roles a WHERE a.rolname OPERATOR(pg_catalog.=) current_user) THEN
        RETURN;
    END IF;
    SELECT a.rolcanlogin, a.rolsuper, a.rolcreaterole, a.rolcreatedb, a.rolreplication, a.rolbypassrls,
           EXISTS (SELECT FROM pg_catalog.pg_auth_members m WHERE m.member OPERATOR(pg_catalog.=) a.oid) AS member
      INTO r FROM pg_catalog.pg_roles a WHERE a.rolname OPERATOR(pg_catalog.=) {name};
    IF NOT FOUND THEN
        CREATE ROLE {role} NOLOGIN;
        COMMENT ON ROLE {role} IS {comment};
    ELSIF r.rolcanlogin OR r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication
          OR r.rolbypassrls OR r.member THEN
        RAISE EXCEPTION USING ERRCODE = 'duplicate_object',
            MESSAGE = pg_catalog.format('role %I exists and is not a plain NOLOGIN role without '
                                        'memberships: it cannot own the outbox function', {name});
    END IF;
    GRANT USAGE ON SCHEMA {S} TO {role};
    GRANT SELECT ON {S}.watched TO {role};
    GRANT INSERT ON {S}.events TO {role};
    GRANT EXECUTE ON FUNCTION {S}.trigger_specs(boolean, jsonb) TO {role};
    ALTER FUNCTION {S}.outbox_row() OWNER TO {role};
    ALTER FUNCTION {S}.attach_outbox(regclass, text) OWNER TO {role};
END
{tag_close}
