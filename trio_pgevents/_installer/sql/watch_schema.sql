-- Register a schema (with its watch options) and attach the triggers of every table in it
-- (a table's own registry entry, if any, wins over its schema's).
DECLARE
    nsp oid;
    r record;
    want text := CASE WHEN durable THEN 'durable' ELSE 'notify' END;
BEGIN
    SELECT n.oid INTO nsp FROM pg_namespace n WHERE n.nspname = target;
    IF nsp IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_schema_name',
            MESSAGE = format('schema %I does not exist', target);
    END IF;
    IF target = {schema} THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('schema %I is the library schema and cannot be watched', target);
    END IF;
    IF durable AND EXISTS (SELECT FROM pg_roles WHERE rolname = {writer}) THEN
        -- Auto-rebuild attaches outbox_row to tables created here later, as the writer
        -- role: it must be able to name them. (Not permitted: those tables wait for the
        -- next install(), and status() reports them.)
        BEGIN
            EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', target, {writer});
        EXCEPTION WHEN insufficient_privilege THEN
            NULL;
        END;
    END IF;
    INSERT INTO {S}.watched AS w (schema_name, table_name, mode, options) VALUES (target, '', want, options)
        ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET mode = EXCLUDED.mode, options = EXCLUDED.options
        WHERE (w.mode, w.options) IS DISTINCT FROM (EXCLUDED.mode, EXCLUDED.options);
    FOR r IN
        SELECT cl.oid, cl.relname, w.mode, w.options FROM pg_class cl
          LEFT JOIN {S}.watched w ON w.schema_name = target AND w.table_name = cl.relname
         WHERE cl.relnamespace = nsp AND cl.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT cl.relispartition
         ORDER BY cl.relname
    LOOP
        CONTINUE WHEN r.mode = 'excluded';
        -- skip_underscore: tables named _... are left out unless watched by name (pg_events' rule).
        CONTINUE WHEN r.mode IS NULL AND coalesce((options ->> 'skip_underscore')::boolean, false)
            AND r.relname LIKE '\_%';
        RETURN QUERY SELECT * FROM {S}.watch_relation(
            r.oid, coalesce(r.mode, want) = 'durable', coalesce(r.options, options));
    END LOOP;
END
