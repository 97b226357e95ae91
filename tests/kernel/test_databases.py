"""SQL over plaintext sockets: `kind: socket` on real MariaDB and PostgreSQL servers and clients."""
from __future__ import annotations

import pytest

from tests.support.databases import MariaDB, Postgres


def _profile(name: str, comm: str, binary: str | None = None) -> str:
    scope = f"\n      binary: {binary}" if binary else ""
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: {name}}}
spec:
  targets:
    - name: sql
      kind: socket{scope}
      filters: {{comm: [{comm}]}}
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


@pytest.fixture(scope="module")
def mariadb():
    with MariaDB() as db:
        yield db


@pytest.fixture(scope="module")
def postgres():
    with Postgres() as pg:
        yield pg


SQL_MY = "CREATE DATABASE IF NOT EXISTS ecap; USE ecap; CREATE TABLE IF NOT EXISTS t (id INT, name TEXT); TRUNCATE t; " \
         "INSERT INTO t VALUES (1,'one'),(2,'two'),(3,'three'); SELECT id, name FROM t ORDER BY id; " \
         "SELECT * FROM no_such_table"


@pytest.mark.parametrize("side", ["server", "client"])
def test_mariadb_queries_and_results(apply_profile, mariadb, side):
    comm = "mariadbd" if side == "server" else "mariadb"
    with apply_profile(_profile(f"my-{side}", comm, "/usr/sbin/mariadbd" if side == "server" else None)) as cap:
        run = mariadb.client(SQL_MY)
        assert "no_such_table" in run.stderr
        assert cap.wait_for(lambda rs: any(r["type"] == "mysql.result" and r.get("status") == "error"
                                           for r in rs))
    queries = [r["sql"] for r in cap.records("mysql.query") if r.get("command") == "COM_QUERY"]
    assert "SELECT id, name FROM t ORDER BY id" in queries
    results = cap.records("mysql.result")
    select = next(r for r in results if r.get("sql") == "SELECT id, name FROM t ORDER BY id")
    assert select["status"] == "rows" and select["columns"] == ["id", "name"]
    assert select["rows"][:3] == [["1", "one"], ["2", "two"], ["3", "three"]] and select["row_count"] >= 3
    assert select["latency_ms"] >= 0
    error = next(r for r in results if r.get("status") == "error")
    assert error["error_code"] == 1146 and "no_such_table" in error["error_message"]
    insert = next(r for r in results if (r.get("sql") or "").startswith("INSERT"))
    assert insert["affected_rows"] == 3
    assert all(r["comm"] == comm and r["conn"]["remote" if side == "client" else "local"].endswith(f":{mariadb.port}")
               for r in results)
    assert cap.records("parse_error") == []


@pytest.mark.parametrize("side", ["server", "client"])
def test_postgres_queries_and_results(apply_profile, postgres, side):
    comm = "postgres" if side == "server" else "psql"
    sql = "CREATE TABLE IF NOT EXISTS t (id int, name text); TRUNCATE t; " \
          "INSERT INTO t VALUES (1,'one'),(2,'two'),(3,'three'); SELECT id, name FROM t ORDER BY id; " \
          "SELECT * FROM no_such_table;"
    with apply_profile(_profile(f"pg-{side}", comm)) as cap:
        run = postgres.client(sql)
        assert "no_such_table" in run.stderr
        assert cap.wait_for(lambda rs: any(r["type"] == "pg.result" and r.get("status") == "error" for r in rs))
    queries = cap.records("pg.query")
    assert any((q.get("sql") or "").startswith("CREATE TABLE") for q in queries)
    results = cap.records("pg.result")
    select = next(r for r in results if r.get("tag") == "SELECT 3")
    assert select["columns"] == ["id", "name"] and select["rows"] == [["1", "one"], ["2", "two"], ["3", "three"]]
    error = next(r for r in results if r.get("status") == "error")
    assert error["error"]["code"] == "42P01"
    assert any(r.get("tag") == "INSERT 0 3" for r in results)
    assert all(r["comm"] == comm for r in results)
    assert cap.records("parse_error") == []


def test_postgres_over_tls_both_sides(apply_profile):
    """The same protocol parser on TLS plaintext: psql's libpq and the server backend, through libssl."""
    profile = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: pg-tls}
spec:
  targets:
    - {name: client, kind: openssl, binary: /usr/lib/postgresql/15/bin/psql}
    - {name: server, kind: openssl, binary: /usr/lib/postgresql/15/bin/postgres}
  parsers: [postgres]
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""
    with Postgres(ssl=True) as pg:
        with apply_profile(profile) as cap:
            run = pg.client("SELECT 40 + 2 AS answer, 'tls' AS how; SHOW ssl;")
            assert run.returncode == 0 and "42|tls" in run.stdout and "on" in run.stdout, run.stderr
            assert cap.wait_for(lambda rs: {r["target"] for r in rs if r["type"] == "pg.result"} >= {"client", "server"})
    for side in ("client", "server"):
        results = [r for r in cap.records("pg.result") if r["target"] == side]
        answer = next(r for r in results if r.get("columns") == ["answer", "how"])
        assert answer["rows"] == [["42", "tls"]] and answer["tag"] == "SELECT 1"
        assert any(q.get("kind") == "startup" and q.get("user") == "postgres"
                   for q in cap.records("pg.query") if q["target"] == side)
