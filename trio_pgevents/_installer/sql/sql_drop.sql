-- DDL events (sql_drop), sent with NOTIFY. Runs as the role doing the DDL.
--
-- By default (pg_events' stream) only the objects the statement named are events: a
-- DROP TABLE is one event, whose "dependents" lists the objects dropped along with the
-- statement (sequence, types, defaults, constraints, indexes, TOAST table...). With
-- ddl_events 'all' ({every_object}), each dropped object is an event of its own.
DECLARE
    r record;
    deps pg_catalog.json;
    kept pg_catalog.json;
    total pg_catalog.int4 := 0;
    n pg_catalog.int4;
    cut pg_catalog.bool;
    payload pg_catalog.text;
BEGIN
    IF NOT {every_object} THEN
        SELECT pg_catalog.json_agg(pg_catalog.json_build_object(
                   'object_type', d.object_type, 'schema_name', d.schema_name,
                   'object_name', d.object_name, 'object_identity', d.object_identity) ORDER BY d.i),
               pg_catalog.count(*)
          INTO deps, total
          FROM pg_catalog.pg_event_trigger_dropped_objects() WITH ORDINALITY AS d(
                   classid, objid, objsubid, original, normal, is_temporary, object_type,
                   schema_name, object_name, object_identity, address_names, address_args, i)
         WHERE NOT d.original
           AND NOT (d.object_type = 'trigger' AND d.object_identity LIKE {own});
    END IF;
    FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
        -- Our own triggers (dropped with a table, or by unwatch_*) are not the user's DDL.
        CONTINUE WHEN r.object_type = 'trigger' AND r.object_identity LIKE {own};
        CONTINUE WHEN NOT ({every_object} OR r.original);
        BEGIN
            IF {every_object} THEN
                payload := {ddl_dropped}::text;
            ELSE
                kept := coalesce(deps, '[]'::json);
                n := total;
                cut := false;
                payload := {ddl_dropped_with}::text;
                -- Too big for NOTIFY (hundreds of dependents): list fewer, and say so.
                WHILE octet_length(payload) > {limit} AND n > 0 LOOP
                    n := n / 2;
                    cut := true;
                    SELECT coalesce(json_agg(e.value ORDER BY e.i), '[]'::json) INTO kept
                      FROM json_array_elements(deps) WITH ORDINALITY AS e(value, i) WHERE e.i <= n;
                    payload := {ddl_dropped_with}::text;
                END LOOP;
            END IF;
            PERFORM pg_notify({channel}, payload);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'trio_pgevents: DDL event not sent: %', SQLERRM;
        END;
    END LOOP;
END
