"""``Installer.list_consumers()``: every durable consumer's mode, members, lag and dead letters (issue 15).

Real streams hold the leases; the listing reads them from the database.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
import trio
from psycopg2 import sql

from trio_pgevents import (
    ConfigurationError,
    ConsumerInfo,
    ConsumerMember,
    Installer,
    open_durable_stream,
)

from .conftest import Outbox, run_sql, take_rows

LEASE = 2.0


def installer_of(outbox: Outbox) -> Installer:
    return Installer(outbox.url, schema=outbox.schema, channel=outbox.channel)


async def listed(outbox: Outbox, name: str) -> ConsumerInfo:
    (info,) = await installer_of(outbox).aio.list_consumers(name)
    return info


async def wait_listing(outbox: Outbox, name: str, condition: Callable[[ConsumerInfo], bool]) -> ConsumerInfo:
    with trio.fail_after(20):
        while not condition(info := await listed(outbox, name)):
            await trio.sleep(0.05)
    return info


def test_old_constructors_still_work() -> None:
    now = datetime.now()
    info = ConsumerInfo("old", 1, 2, now, now, 3)
    assert (info.mode, info.partitions, info.members, info.lag_events, info.lag_seconds) == (
        "exclusive",
        1,
        (),
        0,
        0.0,
    )
    assert info.dead_letters == 0
    assert info.active_members == info.standby_members == ()


async def test_exclusive_consumer_active_and_standby_lag_and_dead_letters(outbox: Outbox) -> None:
    opts = outbox.opts(lease_timeout=LEASE, auto_ack=False)
    async with (
        open_durable_stream(outbox.url, "billing", **opts) as active,
        open_durable_stream(outbox.url, "billing", **opts) as standby,
    ):
        ids = active.statistics().member, standby.statistics().member
        info = await wait_listing(outbox, "billing", lambda i: len(i.members) == 2)
        assert (info.name, info.mode, info.partitions) == ("billing", "exclusive", 1)
        assert info.members[0] == ConsumerMember(ids[0], True, (0,), info.members[0].expires_at)
        assert (info.members[1].member, info.members[1].active, info.members[1].partitions) == (
            ids[1],
            False,
            (),
        )
        assert [m.member for m in info.active_members] == [ids[0]]
        assert [m.member for m in info.standby_members] == [ids[1]]
        assert (info.lag_events, info.pending, info.lag_seconds, info.dead_letters) == (0, 0, 0.0, 0)

        await outbox.ainsert(1, 2, 3)
        await trio.sleep(0.3)  # the events age: the lag in seconds is measured from their writing
        events = await take_rows(active, 3)
        behind = await listed(outbox, "billing")
        assert behind.lag_events == behind.pending == 3
        assert 0.3 <= behind.lag_seconds < 30

        await active.dead_letter(events[0], "broken on purpose", 1)  # acks it too
        await active.ack(events[1])
        one_left = await listed(outbox, "billing")
        assert (one_left.lag_events, one_left.dead_letters) == (1, 1)
        await active.ack(events[2])
        caught_up = await listed(outbox, "billing")
        assert (caught_up.lag_events, caught_up.lag_seconds, caught_up.dead_letters) == (0, 0.0, 1)
        assert caught_up.last_id == events[2].id

    gone = await listed(outbox, "billing")
    assert gone.members == ()  # closing leaves the member list
    assert gone.dead_letters == 1


async def test_group_members_share_the_partitions(outbox: Outbox) -> None:
    opts = outbox.opts(lease_timeout=LEASE, group=True, partitions=4)
    async with (
        open_durable_stream(outbox.url, "fanout", **opts) as first,
        open_durable_stream(outbox.url, "fanout", **opts) as second,
    ):
        info = await wait_listing(
            outbox, "fanout", lambda i: [len(m.partitions) for m in i.members] == [2, 2]
        )
        assert (info.mode, info.partitions) == ("group", 4)
        assert {m.member for m in info.members} == {first.statistics().member, second.statistics().member}
        assert all(m.active for m in info.members)
        assert sorted(p for m in info.members for p in m.partitions) == [0, 1, 2, 3]
        assert all(m.partitions == tuple(sorted(m.partitions)) for m in info.members)


async def test_expired_members_are_not_listed_and_names_filter(outbox: Outbox) -> None:
    installer = installer_of(outbox)
    assert await installer.aio.list_consumers("nobody") == []
    async with open_durable_stream(outbox.url, "a", **outbox.opts(lease_timeout=LEASE)):
        pass
    async with open_durable_stream(outbox.url, "b", **outbox.opts(lease_timeout=LEASE)):
        pass
    members = sql.SQL("{}.consumer_members").format(sql.Identifier(outbox.schema))
    run_sql(
        outbox.dsn,
        sql.SQL(  # type: ignore[arg-type]
            "INSERT INTO {} (consumer, member, expires_at) VALUES ('a', 'ghost:1:x', now() - interval '1 s')"
        ).format(members),
    )
    assert [c.name for c in installer.list_consumers()] == ["a", "b"]
    assert [c.name for c in installer.list_consumers("b")] == ["b"]
    assert (await listed(outbox, "a")).members == ()
    with pytest.raises(ConfigurationError, match="name"):
        installer.list_consumers("")


async def test_tables_of_0_1_0_not_upgraded_yet_are_listed_without_members(outbox: Outbox) -> None:
    async with open_durable_stream(outbox.url, "old", **outbox.opts(lease_timeout=LEASE)):
        pass
    await outbox.ainsert(1)
    schema = sql.Identifier(outbox.schema)
    run_sql(
        outbox.dsn,
        sql.SQL(  # type: ignore[arg-type]
            "DROP TABLE {0}.consumer_members, {0}.consumer_parts; "
            "ALTER TABLE {0}.consumers DROP COLUMN partitions, DROP COLUMN grouped"
        ).format(schema),
    )
    (info,) = installer_of(outbox).list_consumers()
    assert (info.name, info.mode, info.partitions, info.members) == ("old", "exclusive", 1, ())
    assert info.lag_events == 1
    assert info.lag_seconds >= 0
