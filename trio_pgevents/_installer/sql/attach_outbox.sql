-- Auto-rebuild's way to attach outbox_row to a table just created in a durable-watched
-- schema: its creator may not (nobody but the installer has EXECUTE on outbox_row).
--
-- SECURITY DEFINER, owned by the writer role. It attaches only to a table the registry
-- watches in durable mode, and only while the table's owner grants the writer role TRIGGER
-- on it (auto_rebuild does, just before, and revokes it after): so whoever calls it can
-- only get what auto-rebuild would have done for it. It runs no user code. Returns the
-- trigger it created (the owner comments it).
DECLARE
    c record;
    w record;
    spec record;
    label text;
BEGIN
    SELECT cl.relname, n.nspname, cl.relispartition INTO c
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = rel AND cl.relkind IN ('r', 'p');
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT x.mode, x.options, x.table_name <> '' AS explicit INTO w FROM {S}.watched x
     WHERE x.schema_name = c.nspname AND x.table_name IN (c.relname, '')
     ORDER BY x.table_name DESC LIMIT 1;
    IF NOT FOUND OR w.mode <> 'durable' OR (c.relispartition AND NOT w.explicit) THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = format('%I.%I is not watched in durable mode', c.nspname, c.relname);
    END IF;
    label := format('%I.%I', c.nspname, c.relname);
    FOR spec IN SELECT * FROM {S}.trigger_specs(true, w.options) s
                 WHERE s.func = format('%I.%I', {schema}, 'outbox_row') AND s.tgname = trigger LOOP
        CONTINUE WHEN EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgname = spec.tgname);
        EXECUTE format('CREATE TRIGGER %I %s ON %s FOR EACH %s%s EXECUTE FUNCTION %s(%s)',
                       spec.tgname, spec.events, label, spec.level, ' WHEN (' || spec.cond || ')',
                       spec.func, spec.args);
        tgname := spec.tgname;
        RETURN NEXT;
    END LOOP;
END
