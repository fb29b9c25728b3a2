-- DDL events (sql_drop), sent with NOTIFY. Runs as the role doing the DDL.
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        BEGIN
            PERFORM pg_notify({channel}, json_build_object(
                'v', {version}, 'kind', 'ddl', 'classid', r.classid, 'objid', r.objid,
                'objsubid', r.objsubid, 'command_tag', TG_TAG, 'object_type', r.object_type,
                'object_name', r.object_name, 'object_identity', r.object_identity,
                'schema_name', r.schema_name, 'original', r.original, 'normal', r.normal,
                'in_extension', NULL::boolean, 'is_temporary', r.is_temporary,
                'session_user', session_user)::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
