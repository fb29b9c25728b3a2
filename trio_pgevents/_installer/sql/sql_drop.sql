-- DDL events (sql_drop), sent with NOTIFY. Runs as the role doing the DDL.
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        BEGIN
            PERFORM pg_notify({channel}, {ddl_dropped}::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
