-- Durable mode, step 1 of 2: the changed row as JSON, for outbox_row (fired right after).
--
-- SECURITY INVOKER: converting the row may run code the writer defined (a cast to jsonb
-- of a type it owns), so it is done here, with the writer's own rights, and never in
-- outbox_row, which has more. The result is handed over in a transaction-local setting;
-- a writer that sets it by hand can only change what its own row change says.
-- Every name is schema-qualified. It must never make the writer's statement fail.
--
-- TG_ARGV[0]: 'row' (the whole row) or 'keys' (primary key columns only).
DECLARE
    old_j pg_catalog.jsonb;
    new_j pg_catalog.jsonb;
    pk pg_catalog.text[];
BEGIN
    BEGIN
        old_j := pg_catalog.to_jsonb(OLD);
        new_j := pg_catalog.to_jsonb(NEW);
        IF coalesce(TG_ARGV[0] OPERATOR(pg_catalog.=) 'keys', false) THEN
            {key_columns}
            old_j := {jkeys_of_old};
            new_j := {jkeys_of_new};
            PERFORM pg_catalog.set_config({stash}, pg_catalog.jsonb_build_object(
                'o', old_j, 'n', new_j, 'k', true)::pg_catalog.text, true);
        ELSE
            PERFORM pg_catalog.set_config({stash}, pg_catalog.jsonb_build_object(
                'o', old_j, 'n', new_j)::pg_catalog.text, true);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- outbox_row still records the change (table, operation), flagged, with the error.
        PERFORM pg_catalog.set_config({stash}, pg_catalog.jsonb_build_object(
            'e', pg_catalog.left(SQLERRM, 1000))::pg_catalog.text, true);
    END;
    RETURN NULL;
END
