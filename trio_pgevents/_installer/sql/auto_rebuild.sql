-- Watch tables created in a watched schema, inside the statement that creates them (CREATE
-- TABLE, CREATE TABLE AS, SELECT INTO, and CREATE SCHEMA with its tables).
--
-- SECURITY INVOKER: it runs as the role that created the table, which owns it and may
-- attach triggers to it; it needs no more (it reads the registry and attaches the same
-- triggers watch_relation would). Whatever happens, the user's DDL must not fail.
DECLARE
    r record;
    w record;
    spec record;
    label text;
BEGIN
    FOR r IN
        SELECT c.objid, n.nspname, cl.relname, cl.relispartition
          FROM pg_event_trigger_ddl_commands() c
          JOIN pg_class cl ON cl.oid = c.objid
          JOIN pg_namespace n ON n.oid = cl.relnamespace
         WHERE c.classid = 'pg_class'::regclass AND c.objsubid = 0
           AND cl.relkind IN ('r', 'p') AND n.nspname <> {schema}
    LOOP
        BEGIN
            -- The table's own entry (if any) wins over its schema's, which wins over the
            -- "every user schema" entry (schema name ''): a schema created after the watch.
            SELECT x.mode, x.options, x.table_name <> '' AS explicit INTO w FROM {S}.watched x
             WHERE (x.schema_name = r.nspname AND x.table_name IN (r.relname, ''))
                OR (x.schema_name = '' AND x.table_name = ''
                    AND EXISTS (SELECT FROM pg_namespace n WHERE n.nspname = r.nspname AND {user_schema}))
             ORDER BY x.table_name DESC, x.schema_name DESC LIMIT 1;
            -- A partition is covered by its parent's triggers unless it is watched by name;
            -- a schema watched with skip_underscore leaves out tables named _... (pg_events' rule).
            CONTINUE WHEN NOT FOUND OR w.mode = 'excluded' OR (r.relispartition AND NOT w.explicit)
                OR (NOT w.explicit AND coalesce((w.options ->> 'skip_underscore')::boolean, false)
                    AND r.relname LIKE '\_%');
            label := format('%I.%I', r.nspname, r.relname);
            FOR spec IN SELECT * FROM {S}.trigger_specs(w.mode = 'durable', w.options) LOOP
                -- A partition's clone of its parent's trigger has the same name: keep it.
                CONTINUE WHEN EXISTS (SELECT FROM pg_trigger t
                                       WHERE t.tgrelid = r.objid AND t.tgname = spec.tgname);
                IF spec.func = format('%I.%I', {schema}, 'outbox_row') THEN
                    -- Only the writer role may attach outbox_row: lend it TRIGGER on this
                    -- one table for the moment it takes.
                    EXECUTE format('GRANT TRIGGER ON %s TO %I', label, {writer});
                    PERFORM {S}.attach_outbox(r.objid, spec.tgname);
                    EXECUTE format('REVOKE TRIGGER ON %s FROM %I', label, {writer});
                ELSE
                    EXECUTE format('CREATE TRIGGER %I %s ON %s FOR EACH %s%s EXECUTE FUNCTION %s(%s)',
                                   spec.tgname, spec.events, label, spec.level, ' WHEN (' || spec.cond || ')',
                                   spec.func, spec.args);
                END IF;
                EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', spec.tgname, label, spec.comment);
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: could not watch new table %.%: %', r.nspname, r.relname, SQLERRM;
        END;
    END LOOP;
END
