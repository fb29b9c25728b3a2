-- The table triggers one watch needs: name, timing and events, level, function,
-- arguments, the comment (a hash of all that, of the condition and of the function's
-- definition) that lets status() tell an up-to-date trigger from an outdated one, and the
-- WHEN condition (NULL: none). The one definition used by watch_relation, auto_rebuild,
-- attach_outbox and (as a plain query) Installer.status().
--
-- The watch's filters (p_options, checked by the Python side): 'operations' (default: all
-- four), 'columns' (an UPDATE counts only when one of them changed: UPDATE OF them, and
-- their values compared byte for byte, which needs no operator of their type), 'when' (a
-- condition on OLD and NEW), 'channel' (the table's own). Unfiltered, one trigger takes
-- every row operation kept; with 'when' or 'columns', each operation has its own (an
-- INSERT trigger cannot name OLD, nor a DELETE trigger NEW). The outbox trigger of
-- durable mode has exactly the condition of the capture trigger it pairs with.
WITH o AS (
    SELECT CASE WHEN {p_options} ? 'operations'
                THEN ARRAY(SELECT pg_catalog.jsonb_array_elements_text({p_options} -> 'operations'))
                ELSE ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE'] END AS ops,
           {p_options} ? 'when' OR {p_options} ? 'columns' AS split,
           {p_options} ->> 'when' AS cond,
           {p_options} ->> 'channel' AS channel,
           CASE WHEN {p_options} ->> 'payload' = 'keys' THEN 'keys' ELSE 'row' END AS payload,
           (SELECT ' OF ' || pg_catalog.string_agg(pg_catalog.quote_ident(x.c), ', ' ORDER BY x.n)
              FROM pg_catalog.jsonb_array_elements_text({p_options} -> 'columns') WITH ORDINALITY AS x(c, n)
            HAVING pg_catalog.count(*) > 0) AS update_of,
           (SELECT pg_catalog.format('pg_catalog.record_image_ne(ROW(%s), ROW(%s))',
                       pg_catalog.string_agg('OLD.' || pg_catalog.quote_ident(x.c), ', ' ORDER BY x.n),
                       pg_catalog.string_agg('NEW.' || pg_catalog.quote_ident(x.c), ', ' ORDER BY x.n))
              FROM pg_catalog.jsonb_array_elements_text({p_options} -> 'columns') WITH ORDINALITY AS x(c, n)
            HAVING pg_catalog.count(*) > 0) AS changed
), r AS (
    SELECT {row_name}::text AS tgname, {row_out_name}::text AS out_name,
           'AFTER ' || pg_catalog.string_agg(x.op, ' OR ' ORDER BY x.n) AS events, NULL::text AS cond
      FROM o, pg_catalog.unnest(ARRAY['INSERT', 'UPDATE', 'DELETE']) WITH ORDINALITY AS x(op, n)
     WHERE NOT o.split AND x.op = ANY (o.ops)
    HAVING pg_catalog.count(*) > 0
    UNION ALL
    SELECT t.tgname, t.out_name,
           'AFTER ' || t.op || CASE WHEN t.op = 'UPDATE' THEN coalesce(o.update_of, '') ELSE '' END,
           NULLIF(pg_catalog.concat_ws(' AND ', '(' || o.cond || ')',
                                       CASE WHEN t.op = 'UPDATE' THEN o.changed END), '')
      FROM o, {split_names} AS t(op, tgname, out_name)
     WHERE o.split AND t.op = ANY (o.ops)
), s AS (
    SELECT r.tgname, r.events, 'ROW' AS level, 'notify_row' AS fn, {notify_comment} AS fn_comment,
           false AS durable, r.cond FROM r
    UNION ALL
    SELECT r.tgname, r.events, 'ROW', 'outbox_capture', {capture_comment}, true, r.cond FROM r
    UNION ALL
    SELECT r.out_name, r.events, 'ROW', 'outbox_row', {outbox_comment}, true, r.cond FROM r
    UNION ALL
    SELECT {trunc_name}, 'AFTER TRUNCATE', 'STATEMENT', f.fn, f.fn_comment, f.durable, NULL
      FROM o, (VALUES ('notify_row', {notify_comment}, false),
                      ('outbox_row', {outbox_comment}, true)) AS f(fn, fn_comment, durable)
     WHERE 'TRUNCATE' = ANY (o.ops)
)
SELECT s.tgname, s.events, s.level, a.func, a.args,
       {comment_prefix} || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
           pg_catalog.concat_ws(' ', s.tgname, s.events, s.level, a.func, a.args, s.cond, s.fn_comment),
           'UTF8')), 'hex'), 16) AS comment,
       s.cond
  FROM s CROSS JOIN o
 CROSS JOIN LATERAL (
        SELECT pg_catalog.format('%I.%I', {schema}, s.fn) AS func,
               CASE WHEN s.fn = 'outbox_row' THEN coalesce(pg_catalog.quote_literal(o.channel), '')
                    ELSE pg_catalog.quote_literal(o.payload)
                         || coalesce(', ' || pg_catalog.quote_literal(o.channel), '') END AS args) AS a
 WHERE s.durable = {p_durable}
 ORDER BY s.tgname
