-- DDL events (ddl_command_end), sent with NOTIFY. Runs as the role doing the DDL.
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() LOOP
        -- Our own triggers (attached by auto-rebuild or watch_*) are not the user's DDL.
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        BEGIN
            PERFORM pg_notify({channel}, json_build_object(
                'v', {version}, 'kind', 'ddl', 'classid', r.classid, 'objid', r.objid,
                'objsubid', r.objsubid, 'command_tag', r.command_tag, 'object_type', r.object_type,
                'object_name', (pg_identify_object(r.classid, r.objid, r.objsubid)).name,
                'object_identity', r.object_identity, 'schema_name', r.schema_name,
                'original', NULL::boolean, 'normal', NULL::boolean, 'in_extension', r.in_extension,
                'is_temporary', NULL::boolean, 'session_user', session_user)::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
