"""The test PostgreSQL itself: it runs, is reachable on loopback, and comes back after a stop."""

from __future__ import annotations

import psycopg

from tests.postgres import PostgresServer


def test_a_fresh_database_answers_over_loopback(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute("SELECT current_database(), inet_server_addr()").fetchone()
    assert row is not None
    assert row[0] == postgres_url.rsplit("/", 1)[1]
    assert str(row[1]) == "127.0.0.1"


def test_a_private_server_stops_and_starts_again(private_postgres: PostgresServer) -> None:
    url = private_postgres.url()
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE marks (n INTEGER)")
        connection.execute("INSERT INTO marks VALUES (42)")
    private_postgres.stop()
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError:
        pass
    else:
        raise AssertionError("a stopped server accepted a connection")
    private_postgres.start()
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT n FROM marks").fetchall() == [(42,)]
