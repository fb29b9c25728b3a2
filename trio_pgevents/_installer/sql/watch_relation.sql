-- Attach (or bring up to date) the triggers of one watch on one relation, and remove ours
-- that this watch does not use. Runs as the caller: it can only do what the caller could.
--
-- A filtered watch's trigger may not fit the table (a condition naming a column it lacks,
-- or NEW in a DELETE trigger): that is raised as FILTER_ERROR naming the table, and the
-- caller's transaction leaves nothing behind. In durable mode the capture and outbox
-- triggers evaluate the same condition for each row and must agree, so it may call no
-- VOLATILE function (random(), or a function not declared STABLE or IMMUTABLE).
DECLARE
    c record;
    t record;
    spec record;
    label text;
    wanted text[] := '{{}}';
    filtered boolean := options ? 'when' OR options ? 'columns';
    ddl text;
    volatile text;
    hint text;
BEGIN
    SELECT cl.relkind, cl.relname, n.nspname, pg_catalog.pg_get_userbyid(cl.relowner) AS owner INTO c
      FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE cl.oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = format('relation %s does not exist', rel);
    END IF;
    label := format('%I.%I', c.nspname, c.relname);
    kind := 'table'; name := label;
    IF c.relkind NOT IN ('r', 'p') THEN
        action := 'skipped';
        reason := CASE c.relkind
            WHEN 'v' THEN 'a view: it has no rows of its own; watch the tables it reads'
            WHEN 'm' THEN 'a materialized view: row triggers are not possible on it'
            WHEN 'f' THEN 'a foreign table: its changes happen on another server'
            ELSE 'not a table (relkind ' || c.relkind::text || ')' END;
        RETURN NEXT;
        RETURN;
    END IF;
    IF c.nspname = {schema} THEN
        action := 'skipped'; reason := 'belongs to the library schema';
        RETURN NEXT;
        RETURN;
    END IF;
    FOR spec IN SELECT * FROM {S}.trigger_specs(durable, options) LOOP
        wanted := wanted || spec.tgname;
        kind := 'trigger';
        name := spec.tgname || ' on ' || label;
        reason := NULL;
        SELECT tg.tgparentid, d.description INTO t
          FROM pg_trigger tg
          LEFT JOIN pg_description d ON d.objoid = tg.oid AND d.classoid = 'pg_trigger'::regclass
         WHERE tg.tgrelid = rel AND tg.tgname = spec.tgname;
        IF FOUND AND t.tgparentid <> 0 THEN
            action := 'skipped'; reason := 'inherited from the partitioned parent table';
        ELSIF FOUND AND t.description IS NOT DISTINCT FROM spec.comment THEN
            action := 'unchanged';
        ELSIF NOT has_table_privilege(rel, 'TRIGGER') THEN
            -- One table of another owner must not stop the others from being watched.
            action := 'skipped';
            reason := format('owned by %s: only its owner or a superuser may attach triggers', c.owner);
        ELSE
            IF FOUND THEN
                -- Same transaction as the CREATE below: no write can slip between them.
                EXECUTE format('DROP TRIGGER %I ON %s', spec.tgname, label);
                action := 'replaced';
            ELSE
                action := 'installed';
            END IF;
            ddl := format('CREATE TRIGGER %I %s ON %s FOR EACH %s%s EXECUTE FUNCTION %s(%s)',
                          spec.tgname, spec.events, label, spec.level, ' WHEN (' || spec.cond || ')',
                          spec.func, spec.args);
            IF NOT filtered THEN
                EXECUTE ddl;
            ELSE
                BEGIN
                    EXECUTE ddl;
                EXCEPTION WHEN OTHERS THEN
                    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
                    IF SQLSTATE = '42P17' THEN  -- OLD in an INSERT trigger, NEW in a DELETE one
                        hint := 'an INSERT has no OLD row and a DELETE no NEW row: a condition naming NEW '
                                'needs operations without DELETE (such as INSERT, UPDATE), one naming OLD '
                                'operations without INSERT';
                    ELSIF SQLSTATE IN ('42883', '42704') THEN  -- no such function, operator or type
                        hint := 'the condition is read with search_path = pg_catalog: qualify your own '
                                'functions, operators and types (myschema.f(NEW.x))';
                    END IF;
                    IF coalesce(hint, '') = '' THEN
                        RAISE EXCEPTION USING ERRCODE = {filter_error},
                            MESSAGE = format('the filter does not fit table %s: %s', label, SQLERRM);
                    END IF;
                    RAISE EXCEPTION USING ERRCODE = {filter_error}, HINT = hint,
                        MESSAGE = format('the filter does not fit table %s: %s', label, SQLERRM);
                END;
                IF durable AND spec.cond IS NOT NULL THEN
                    SELECT string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO volatile
                      FROM pg_trigger tg
                     CROSS JOIN LATERAL regexp_matches(tg.tgqual::text, ':(?:func|opfunc)id (\d+)', 'g') m
                      JOIN pg_proc p ON p.oid = m[1]::oid
                     WHERE tg.tgrelid = rel AND tg.tgname = spec.tgname AND p.provolatile = 'v';
                    IF volatile IS NOT NULL THEN
                        RAISE EXCEPTION USING ERRCODE = {filter_error},
                            MESSAGE = format('the condition of a durable watch of %s calls VOLATILE %s: its '
                                             'capture and outbox triggers could disagree', label, volatile),
                            HINT = 'declare the function STABLE or IMMUTABLE, or watch the table without durable';
                    END IF;
                END IF;
            END IF;
            EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', spec.tgname, label, spec.comment);
        END IF;
        RETURN NEXT;
    END LOOP;
    -- Ours but not used by this watch (the durable ones after a switch to NOTIFY).
    FOR t IN SELECT tg.tgname FROM pg_trigger tg
              WHERE tg.tgrelid = rel AND tg.tgparentid = 0 AND tg.tgname = ANY ({all_names})
                AND tg.tgname <> ALL (wanted)
    LOOP
        kind := 'trigger';
        name := t.tgname || ' on ' || label;
        IF has_table_privilege(rel, 'TRIGGER') THEN
            EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, label);
            action := 'removed'; reason := 'not used by this watch';
        ELSE
            action := 'skipped';
            reason := format('owned by %s: only its owner or a superuser may remove triggers', c.owner);
        END IF;
        RETURN NEXT;
    END LOOP;
END
