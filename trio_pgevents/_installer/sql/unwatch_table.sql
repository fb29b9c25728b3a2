-- Remove one table's triggers and forget it (if its schema stays watched, by name or as
-- one of every user schema, remember that this table is not).
DECLARE
    rel oid;
    tg text;
    label text := format('%I.%I', p_schema, p_table);
BEGIN
    DELETE FROM {S}.watched w WHERE w.schema_name = p_schema AND w.table_name = p_table;
    IF EXISTS (SELECT FROM {S}.watched w WHERE w.schema_name = p_schema AND w.table_name = '')
       OR (EXISTS (SELECT FROM {S}.watched w WHERE w.schema_name = '' AND w.table_name = '')
           AND EXISTS (SELECT FROM pg_namespace n WHERE n.nspname = p_schema AND {user_schema})) THEN
        INSERT INTO {S}.watched (schema_name, table_name, mode) VALUES (p_schema, p_table, 'excluded');
    END IF;
    SELECT cl.oid INTO rel FROM pg_class cl
      JOIN pg_namespace n ON n.oid = cl.relnamespace
     WHERE n.nspname = p_schema AND cl.relname = p_table;
    kind := 'trigger'; reason := NULL; action := 'removed';
    FOR tg IN SELECT t.tgname FROM pg_trigger t
               WHERE t.tgrelid = rel AND t.tgname = ANY ({all_names}) AND t.tgparentid = 0
               ORDER BY t.tgname
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', tg, label);
        name := tg || ' on ' || label;
        RETURN NEXT;
    END LOOP;
    IF NOT FOUND THEN
        kind := 'table'; name := label; action := 'unchanged'; reason := 'no trigger installed';
        RETURN NEXT;
    END IF;
END
