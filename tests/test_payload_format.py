"""The payload format is defined once (``_payload``): SQL, checks and events all come from it.

These check that the generated pieces agree with the key tables (only the
installer's script needs the server); the installer's tests check that what
the SQL really sends decodes.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from trio_pgevents import Installer, PayloadError
from trio_pgevents._payload import (
    DDL,
    DDL_KEYS,
    FORMAT_VERSION,
    METHODS,
    ROW,
    ROW_KEYS,
    Key,
    first_problem,
    is_ddl,
    is_row,
    kind_of,
    object_sql,
)

#: One value of each JSON type, as parsed.
VALUES: list[Any] = ["text", 7, 1.5, True, None, {"a": 1}, [1], "INSERT"]


def slow_check(data: dict[str, Any], keys: tuple[Key, ...]) -> bool:
    return all(type(data.get(key.name)) in key.types for key in keys)


@pytest.mark.parametrize(("kind", "keys", "check"), [(ROW, ROW_KEYS, is_row), (DDL, DDL_KEYS, is_ddl)])
def test_the_compiled_check_is_the_key_table(kind: str, keys: tuple[Key, ...], check: Any) -> None:
    rng = random.Random(14)
    for _ in range(5000):
        data = {key.name: rng.choice(VALUES) for key in keys if rng.random() < 0.9}
        if kind == ROW and rng.random() < 0.5:
            data["method"] = rng.choice(sorted(METHODS))
        expected = slow_check(data, keys) and (kind != ROW or data.get("method") in METHODS)
        assert check(data) is expected, data
        if not expected:
            assert first_problem(data, kind)


def test_kind_comes_from_the_kind_field() -> None:
    row = {"kind": "row", "table_name": "t", "method": "INSERT"}
    assert kind_of(row) == ROW
    # Row data cannot make an event of another kind: only the top-level field counts.
    assert kind_of({"kind": "row", "table_name": "t", "method": "DELETE", "old_data": {"kind": "ddl"}}) == ROW
    with pytest.raises(PayloadError, match="no row or DDL event"):
        kind_of({"kind": "rows", "table_name": "t", "method": "INSERT"})
    with pytest.raises(PayloadError, match="not an object"):
        kind_of([row])
    # pg_events' own format has no kind: it is known by its keys.
    assert kind_of({"table_name": "t", "method": "UPDATE"}) == ROW
    assert kind_of({"command_tag": "CREATE TABLE"}) == DDL


def test_object_sql_refuses_a_key_the_format_does_not_have() -> None:
    with pytest.raises(KeyError, match="tabel_name"):
        object_sql(ROW, {"tabel_name": "TG_TABLE_NAME"})
    with pytest.raises(KeyError, match="lsn"):  # added by readers, never written by SQL
        object_sql(ROW, {"lsn": "'0/0'"})


def test_object_sql_writes_every_emitted_key_in_order_with_typed_nulls() -> None:
    text = object_sql(ROW, {"table_name": "TG_TABLE_NAME"}, jsonb=True)
    assert text.startswith(f"pg_catalog.jsonb_build_object('v', {FORMAT_VERSION}, 'kind', 'row', ")
    emitted = [k.name for k in ROW_KEYS if k.emitted and not k.optional]
    positions = [text.index(f"'{name}', ") for name in emitted]
    assert positions == sorted(positions)
    assert "'old_data', NULL::pg_catalog.jsonb" in text
    assert "'keys_only'" not in text  # optional keys only when given


@pytest.mark.parametrize(("include_query", "durable"), list(itertools.product([True, False], [True, False])))
def test_the_installer_sql_holds_the_format(pg_url: str, include_query: bool, durable: bool) -> None:
    script = Installer(pg_url, include_query=include_query).install_sql(ddl=True, durable=durable)
    for key in (*ROW_KEYS, *DDL_KEYS):
        if key.emitted:
            assert f"'{key.name}', " in script, key.name
    assert f"'v', {FORMAT_VERSION}, 'kind', 'row'" in script
    assert f"'v', {FORMAT_VERSION}, 'kind', 'ddl'" in script
