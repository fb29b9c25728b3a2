DO {tag_open}
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
             WHERE n.nspname OPERATOR(pg_catalog.=) {nsp} AND p.proname OPERATOR(pg_catalog.=) {name} LOOP
        EXECUTE 'DROP FUNCTION ' OPERATOR(pg_catalog.||) f::text OPERATOR(pg_catalog.||) ' CASCADE';
    END LOOP;
END
{tag_close}
