-- Row and TRUNCATE events sent with NOTIFY on the installer's channel.
--
-- SECURITY INVOKER: it runs as the writer. Turning the row into JSON may run code the
-- writer defined (a cast to json of a type it owns); that code gets the writer's own
-- rights, never more. Every name is schema-qualified, operators included, so nothing is
-- looked up on the writer's search_path. It must never make the writer's statement fail.
--
-- TG_ARGV[0]: 'row' (the whole row) or 'keys' (primary key columns only: for tables whose
-- rows must not reach every role that can LISTEN). TG_ARGV[1], if given: the table's own
-- channel (a watch's 'channel' option), instead of the installer's.
DECLARE
    keys_only pg_catalog.bool := coalesce(TG_ARGV[0] OPERATOR(pg_catalog.=) 'keys', false);
    chan pg_catalog.text := coalesce(TG_ARGV[1], {channel});
    old_j pg_catalog.json;
    new_j pg_catalog.json;
    q pg_catalog.text;
    pk pg_catalog.text[];
    payload pg_catalog.text;
    base pg_catalog.text;
    cut pg_catalog.text;
    stage pg_catalog.int4;
    excess pg_catalog.int4;
    quoted pg_catalog.int4;
BEGIN
    old_j := pg_catalog.row_to_json(OLD);  -- NULL for INSERT and TRUNCATE
    new_j := pg_catalog.row_to_json(NEW);  -- NULL for DELETE and TRUNCATE
    q := {query};
    IF keys_only THEN
        {key_columns}
        old_j := {keys_of_old};
        new_j := {keys_of_new};
        payload := {row_keys_only}::pg_catalog.text;
    ELSE
        payload := {row_whole}::pg_catalog.text;
    END IF;
    IF pg_catalog.octet_length(payload) OPERATOR(pg_catalog.>) {limit} THEN
        -- Too big for NOTIFY (slow path): cut the query first, then reduce the row to its
        -- primary key columns, then leave the row out; 'truncated' says so.
        FOR stage IN 1..3 LOOP
            IF stage OPERATOR(pg_catalog.=) 2 THEN
                {key_columns}
                CONTINUE WHEN pk IS NULL;
                old_j := {keys_of_old};
                new_j := {keys_of_new};
            ELSIF stage OPERATOR(pg_catalog.=) 3 THEN
                old_j := NULL;
                new_j := NULL;
            END IF;
            base := {row_cut}::pg_catalog.text;
            CONTINUE WHEN pg_catalog.octet_length(base) OPERATOR(pg_catalog.>) {limit};
            payload := base;
            EXIT WHEN q IS NULL OR keys_only;
            -- Put back as much of the query as fits (each pass removes at least the excess).
            cut := pg_catalog.left(q, {limit} OPERATOR(pg_catalog.-) pg_catalog.octet_length(base));
            LOOP
                payload := {row_cut_query}::pg_catalog.text;
                excess := pg_catalog.octet_length(payload) OPERATOR(pg_catalog.-) {limit};
                EXIT WHEN excess OPERATOR(pg_catalog.<=) 0;
                -- Shrink in proportion to the bytes each character takes (UTF-8, JSON escapes).
                quoted := pg_catalog.octet_length(pg_catalog.to_json(cut)::pg_catalog.text);
                cut := pg_catalog.left(cut, GREATEST(0, LEAST(
                    pg_catalog.length(cut) OPERATOR(pg_catalog.-) 1,
                    (pg_catalog.length(cut)::pg_catalog.int8 OPERATOR(pg_catalog.*) (quoted OPERATOR(pg_catalog.-) excess)
                        OPERATOR(pg_catalog./) quoted)::pg_catalog.int4)));
            END LOOP;
            EXIT;
        END LOOP;
    END IF;
    PERFORM pg_catalog.pg_notify(chan, payload);
    RETURN NULL;
EXCEPTION WHEN OTHERS THEN
    -- Last resort: the writer's statement must commit, whatever went wrong here.
    BEGIN
        PERFORM pg_catalog.pg_notify(chan, {row_failed}::pg_catalog.text);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'trio_pgevents: event for %.% not sent: %', TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM;
    END;
    RETURN NULL;
END
