-- Watch every user schema, those created later too: register the "every user schema" entry
-- (schema name '': no schema can have an empty name; auto-rebuild, install() and status()
-- read it) and watch each user schema there is now, with the same options.
DECLARE
    r record;
    want text := CASE WHEN durable THEN 'durable' ELSE 'notify' END;
    known record;
BEGIN
    SELECT w.mode, w.options INTO known FROM {S}.watched w WHERE w.schema_name = '' AND w.table_name = '';
    kind := 'watch'; name := 'every user schema'; reason := NULL;
    action := CASE WHEN NOT FOUND THEN 'installed'
                   WHEN (known.mode, known.options) IS DISTINCT FROM (want, options) THEN 'replaced'
                   ELSE 'unchanged' END;
    INSERT INTO {S}.watched AS w (schema_name, table_name, mode, options) VALUES ('', '', want, options)
        ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET mode = EXCLUDED.mode, options = EXCLUDED.options
        WHERE (w.mode, w.options) IS DISTINCT FROM (EXCLUDED.mode, EXCLUDED.options);
    RETURN NEXT;
    FOR r IN SELECT n.nspname FROM pg_namespace n WHERE {user_schema} ORDER BY n.nspname LOOP
        RETURN QUERY SELECT * FROM {S}.watch_schema(r.nspname, durable, options);
    END LOOP;
END
