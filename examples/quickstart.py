import sqlalchemy
import trio

from trio_pgevents import Installer, RowChange, open_event_stream
from trio_pgevents.testing import EmbeddedPostgres


def sql(engine: sqlalchemy.Engine, statement: str) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(statement)


async def follow(engine: sqlalchemy.Engine) -> None:
    async with open_event_stream(engine, ["pgevents"]) as events:  # LISTEN done: nothing is missed
        await trio.to_thread.run_sync(sql, engine, "INSERT INTO orders VALUES (1, 19.90)")
        async for event in events:  # also StreamGap after a reconnect: changes may be missing
            if isinstance(event, RowChange):
                print(event.method, event.table_name, event.new_data)  # INSERT orders {'id': 1, ...}
                break


if __name__ == "__main__":
    with EmbeddedPostgres() as server:  # a throw-away server; or "postgresql+psycopg2://app@db/app"
        engine = sqlalchemy.create_engine(server.url)
        sql(engine, "CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
        Installer(engine).install()  # the trigger function, in schema "pgevents"
        Installer(engine).watch_table("orders")  # changes to orders become events
        trio.run(follow, engine)
