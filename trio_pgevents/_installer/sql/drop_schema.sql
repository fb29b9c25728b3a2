DO {tag_open}
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace n
                 JOIN pg_catalog.pg_description d
                   ON d.objoid OPERATOR(pg_catalog.=) n.oid
                  AND d.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                WHERE n.nspname OPERATOR(pg_catalog.=) {name} AND d.description OPERATOR(pg_catalog.=) {comment})
       AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend dep
                        WHERE dep.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                          AND dep.refobjid OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_namespace
                                                                  WHERE nspname OPERATOR(pg_catalog.=) {name}))
    THEN
        DROP SCHEMA {S};
    END IF;
END
{tag_close}
