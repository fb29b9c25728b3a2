-- Durable mode, step 2 of 2 (and TRUNCATE): append the event to the outbox.
--
-- SECURITY DEFINER, owned by the installer's writer role, whose only rights are to read
-- the registry and append to the events table: writers need no privilege on the outbox.
-- It runs no code a user can define: the row arrives as text from outbox_capture, every
-- name is schema-qualified (operators too), and it converts no user values. The table it
-- reports comes from the trigger itself, never from the handed-over text. Nobody but the
-- installer may attach it (no EXECUTE for PUBLIC); auto-rebuild attaches it through
-- attach_outbox, only to tables the registry watches in durable mode. So it checks nothing
-- per row: a registry lookup here cost every write ~15% (benchmarks/durable.py).
--
-- TG_ARGV[0], if given: the table's own channel (a watch's 'channel' option), recorded as the
-- event's channel instead of the installer's (the wake-up stays on the installer's).
DECLARE
    stash pg_catalog.jsonb;
    note pg_catalog.text;
BEGIN
    IF TG_LEVEL OPERATOR(pg_catalog.=) 'ROW' THEN
        stash := CASE WHEN pg_catalog.current_setting({stash}, true) OPERATOR(pg_catalog.=) '' THEN NULL
                      ELSE pg_catalog.current_setting({stash}, true)::pg_catalog.jsonb END;
        PERFORM pg_catalog.set_config({stash}, '', true);
        IF stash IS NULL THEN
            note := 'the row was not captured (outbox_capture trigger missing or disabled)';
        ELSE
            note := stash OPERATOR(pg_catalog.->>) 'e';
        END IF;
    END IF;
    INSERT INTO {S}.events (channel, payload) VALUES (coalesce(TG_ARGV[0], {channel}), {outbox_row}
        OPERATOR(pg_catalog.||) CASE WHEN note IS NOT NULL THEN {outbox_failed}
                                     WHEN stash OPERATOR(pg_catalog.?) 'k' THEN {outbox_keys_only}
                                     ELSE '{{}}'::pg_catalog.jsonb END);
    -- Identical for the whole transaction: the server folds them into one notification.
    -- Only one transaction at a time sends it: a NOTIFY takes a database-wide lock at
    -- commit, held through the WAL flush, which serialises every notifying commit. One
    -- that finds another notifying skips; durable consumers re-read shortly after every
    -- wake-up and every poll_interval, so its events are read all the same.
    IF pg_catalog.pg_try_advisory_xact_lock({wake_key}) THEN
        PERFORM pg_catalog.pg_notify({wake}, pg_catalog.pg_current_xact_id()::pg_catalog.text);
    END IF;
    RETURN NULL;
END
