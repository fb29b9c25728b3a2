-- DDL events (ddl_command_end), sent with NOTIFY. Runs as the role doing the DDL.
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        -- Our own triggers (attached by auto-rebuild or watch_*) are not the user's DDL.
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        BEGIN
            PERFORM pg_notify({channel}, {ddl_command}::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
