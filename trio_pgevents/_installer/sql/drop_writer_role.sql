DO {tag_open}
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles a
                 JOIN pg_catalog.pg_shdescription d ON d.objoid OPERATOR(pg_catalog.=) a.oid
                WHERE a.rolname OPERATOR(pg_catalog.=) {name} AND d.description OPERATOR(pg_catalog.=) {comment}) THEN
        DROP ROLE {role};
    END IF;
END
{tag_close}
