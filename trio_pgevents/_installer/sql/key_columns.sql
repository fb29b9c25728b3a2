SELECT pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY a.attnum) INTO pk
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid
           AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey)
         WHERE i.indrelid OPERATOR(pg_catalog.=) TG_RELID AND i.indisprimary;
