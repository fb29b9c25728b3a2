-- The table triggers one watch needs: name, timing and events, level, function,
-- arguments, and the comment (a hash of all that and of the function's definition) that
-- lets status() tell an up-to-date trigger from an outdated one. The one definition used
-- by watch_relation, auto_rebuild and (as a plain query) Installer.status().
SELECT v.tgname, v.events, v.level, s.func, s.args,
       {comment_prefix} || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
           pg_catalog.concat_ws(' ', v.tgname, v.events, v.level, s.func, s.args, v.fn_comment),
           'UTF8')), 'hex'), 16) AS comment
  FROM (VALUES
        ({row_name}, {row_events}, 'ROW', 'notify_row', {notify_comment}, false),
        ({trunc_name}, 'AFTER TRUNCATE', 'STATEMENT', 'notify_row', {notify_comment}, false),
        ({row_name}, {row_events}, 'ROW', 'outbox_capture', {capture_comment}, true),
        ({row_out_name}, {row_events}, 'ROW', 'outbox_row', {outbox_comment}, true),
        ({trunc_name}, 'AFTER TRUNCATE', 'STATEMENT', 'outbox_row', {outbox_comment}, true)
       ) AS v(tgname, events, level, fn, fn_comment, durable)
 CROSS JOIN LATERAL (
        SELECT pg_catalog.format('%I.%I', {schema}, v.fn) AS func,
               CASE WHEN v.fn = 'outbox_row' THEN ''
                    ELSE pg_catalog.quote_literal(CASE WHEN {p_options} ->> 'payload' = 'keys' THEN 'keys'
                                                       ELSE 'row' END) END AS args) AS s
 WHERE v.durable = {p_durable}
 ORDER BY v.tgname
