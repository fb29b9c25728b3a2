-- Register one table (with its watch options) and attach its triggers.
DECLARE
    rel oid;
    want text := CASE WHEN durable THEN 'durable' ELSE 'notify' END;
BEGIN
    SELECT cl.oid INTO rel FROM pg_class cl
      JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE n.nspname = p_schema AND cl.relname = p_table;
    IF rel IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = format('table %I.%I does not exist', p_schema, p_table);
    END IF;
    INSERT INTO {S}.watched AS w (schema_name, table_name, mode, options)
    VALUES (p_schema, p_table, want, options)
        ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET mode = EXCLUDED.mode, options = EXCLUDED.options
        WHERE (w.mode, w.options) IS DISTINCT FROM (EXCLUDED.mode, EXCLUDED.options);
    RETURN QUERY SELECT * FROM {S}.watch_relation(rel, durable, options);
END
