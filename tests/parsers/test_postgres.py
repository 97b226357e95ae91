"""Tests for orchestrator.parsers.postgres (sans-IO PostgreSQL v3 protocol parser).

Fixtures are conversations under fixtures/postgres/: synthetic ones from
make_fixtures.py (built from the protocol spec) and real-*.conv recorded from
PostgreSQL 15 (psql, pgbench) through fixtures/mysql/record_proxy.py.  Each
conversation is fed as the captured CLIENT (frontend bytes are "write") and as
the captured SERVER (directions swapped); whole, every chunk split at every
offset, byte by byte and randomly re-chunked: all must give the same messages.
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.parsers import mysql, postgres

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "postgres"
MS = 1_000_000


def read_conv(path: Path, as_server: bool = False) -> list[tuple[str, bytes, int]]:
    """.conv -> [(direction, chunk, ts)]; frontend->backend is "write" for a captured client."""
    b = path.read_bytes()
    out, i = [], 0
    while i < len(b):
        tag = b[i:i + 1]
        n = struct.unpack_from(">I", b, i + 1)[0]
        to_server = tag == b">"
        out.append(("read" if to_server == as_server else "write", b[i + 5:i + 5 + n], len(out) * MS))
        i += 5 + n
    return out


def Q(**f):
    return ("pg.query", f)


def R(**f):
    return ("pg.result", f)


def E(reason_part: str, offset: int):
    return ("parse_error", {"reason": reason_part, "offset": offset})


@dataclass
class Case:
    file: str
    expected: list
    tls: bool = False
    max_rows: int = 5
    exact: list = field(default_factory=list)

    def chunks(self, as_server=False):
        return read_conv(FIXTURES / self.file, as_server)


ROWS3 = [["1", "apple", None], ["2", "pear", "ripe"], ["3", "plum", ""]]
SCRAM = "sasl/SCRAM-SHA-256"
ERR42703 = {"severity": "ERROR", "code": "42703", "message": 'column "nosuchcol" does not exist',
            "position": "8"}
REAL_ROWS = [["1", "apple", "1.50", None], ["2", "pear", "2.25", "ripe"]]
SQL_SEL = "SELECT id, name, price, note FROM items WHERE id <= $1 ORDER BY id;"
SQL_UPD = "UPDATE items SET note = 'x' WHERE id = $1;"

CASES = [
    Case("simple_session.conv", [
        Q(kind="startup", user="alice", database="shop", application_name="app"),
        R(sql=None, status="ok", auth="trust", server_version="16.2", backend_pid=4242),
        Q(kind="simple", sql="SELECT id, name, note FROM items"),
        R(sql="SELECT id, name, note FROM items", status="ok", tag="SELECT 3",
          columns=["id", "name", "note"], rows=ROWS3, row_count=3, latency_ms=1.0),
        Q(kind="simple", sql="BEGIN; INSERT INTO t VALUES (1); SELECT 1/0; COMMIT"),
        R(status="ok", tag="BEGIN", row_count=0),
        R(status="ok", tag="INSERT 0 1", row_count=1, notices=["hello"]),
        R(status="error", tag=None, error={"severity": "ERROR", "code": "22012",
                                           "message": "division by zero", "position": "15"}),
        Q(kind="simple", sql=""),
        R(status="ok", tag=None, row_count=0),
        Q(sql="SELECT n FROM generate_series(1, 7) n"),
        R(tag="SELECT 7", row_count=7, rows=[[str(i)] for i in range(1, 6)]),
    ], exact=[3]),
    Case("sslreq_n_extended.conv", [
        Q(kind="startup", user="bob", database="db1"),
        R(status="ok", auth="md5", backend_pid=7),
        Q(kind="extended", sql="SELECT name FROM items WHERE id = $1", statement="s1", params=["2"]),
        Q(kind="extended", sql="INSERT INTO items(name, blob) VALUES ($1, $2)", statement="",
          params=["kiwi", {"binary_length": 3}]),
        Q(kind="extended", sql="SELECT boom($1)", params=[None]),
        R(sql="SELECT name FROM items WHERE id = $1", status="ok", tag="SELECT 1",
          columns=["name"], rows=[["pear"]], row_count=1),
        R(sql="INSERT INTO items(name, blob) VALUES ($1, $2)", tag="INSERT 0 1", columns=[],
          row_count=1),
        R(sql="SELECT boom($1)", status="error", columns=[],
          error={"severity": "ERROR", "code": "42883",
                 "message": "function boom(unknown) does not exist", "position": "15"}),
        Q(kind="extended", sql="SELECT name FROM items WHERE id = $1", statement="s1",
          params=["1"], portal="p1"),
        R(status="ok", tag=None, suspended=True, rows=[["apple"]], row_count=1, columns=["name"]),
    ]),
    Case("ssl_accepted.conv", [], tls=True),
    Case("gssenc_refused.conv", [
        Q(kind="startup", user="carol", database="carol"),
        R(status="error", auth="password", error={
            "severity": "FATAL", "code": "28P01",
            "message": 'password authentication failed for user "carol"', "position": "15"}),
    ]),
    Case("cancel_request.conv", [Q(kind="cancel", backend_pid=4242)]),
    Case("mid_connection.conv", [
        Q(kind="simple", sql="SELECT 42 AS answer"),
        R(columns=["answer"], rows=[["42"]], tag="SELECT 1", latency_ms=1.0),
    ]),
    Case("mid_connection_extended.conv", [
        Q(kind="extended", sql=None, statement="known_before_capture", params=["5"]),
        R(sql=None, rows=[["5"]], tag="SELECT 1", columns=[]),
    ]),
    Case("copy.conv", [
        Q(sql="COPY items TO STDOUT"),
        R(tag="COPY 2", row_count=2, copy={"direction": "out", "bytes": 15}),
        Q(sql="COPY items FROM STDIN"),
        R(tag="COPY 1", row_count=1, copy={"direction": "in", "bytes": 7}, latency_ms=3.0),
    ]),
    Case("bad_backend_type.conv", [Q(sql="SELECT 1"), E("unknown backend message type", 0)]),
    Case("bad_data_row.conv", [Q(sql="SELECT 1"), E("value runs past the end", 27)]),
    # --------------------------------------------------------- real PostgreSQL
    Case("real_psql_sslreq_n.conv", [
        Q(kind="startup", user="app", database="shop", application_name="fixture"),
        R(status="ok", auth=SCRAM, server_version="15.18 (Debian 15.18-0+deb12u1)"),
        Q(kind="simple", sql="SELECT id, name, price, note FROM items ORDER BY id LIMIT 3"),
        R(tag="SELECT 3", columns=["id", "name", "price", "note"], row_count=3,
          rows=REAL_ROWS + [["3", "plum", "0.99", ""]]),
        Q(sql="INSERT INTO items(name, price) VALUES ('fig', 3.10)"),
        R(tag="INSERT 0 1", row_count=1),
        Q(sql="SELECT nosuchcol FROM items"),
        R(status="error", error=ERR42703),
        Q(sql="SELECT 1 AS one; SELECT 'two' AS two, NULL AS nothing; "),
        R(tag="SELECT 1", columns=["one"], rows=[["1"]]),
        R(tag="SELECT 1", columns=["two", "nothing"], rows=[["two", None]]),
    ]),
    Case("real_scram_login.conv", [
        Q(kind="startup", user="app", application_name="pgbench"),
        R(status="ok", auth=SCRAM),
    ]),
    Case("real_pgbench_prepared.conv", [
        Q(kind="startup"), R(status="ok"),
        Q(kind="extended", sql=SQL_SEL, statement="P_0", params=["3"]),
        R(sql=SQL_SEL, tag="SELECT 3", columns=["id", "name", "price", "note"],
          rows=REAL_ROWS + [["3", "plum", "0.99", ""]], statement="P_0"),
        Q(kind="extended", sql=SQL_UPD, statement="P_1", params=["3"]),
        R(sql=SQL_UPD, tag="UPDATE 1", row_count=1, columns=[]),
        Q(sql=SQL_SEL), R(rows=REAL_ROWS + [["3", "plum", "0.99", "x"]]),
        Q(sql=SQL_UPD), R(tag="UPDATE 1"),
    ]),
    Case("real_pgbench_extended.conv", [
        Q(kind="startup"), R(status="ok"),
        Q(kind="extended", sql=SQL_SEL, statement="", params=["3"]),
        R(sql=SQL_SEL, columns=["id", "name", "price", "note"], row_count=3),
        Q(sql=SQL_UPD), R(tag="UPDATE 1"),
    ]),
    Case("real_copy_out_big.conv", [
        Q(kind="startup"), R(status="ok"),
        Q(sql="COPY (SELECT id, name FROM items WHERE id <= 3 ORDER BY id) TO STDOUT"),
        R(tag="COPY 3", copy={"direction": "out", "bytes": 22}),
        Q(sql="SELECT n, repeat('y', 40) FROM generate_series(1, 2000) n"),
        R(tag="SELECT 2000", row_count=2000, columns=["n", "repeat"],
          rows=[[str(i), "y" * 40] for i in range(1, 6)]),
    ]),
    Case("real_bad_password.conv", [
        Q(kind="startup", user="app"),
        R(status="error", auth=SCRAM, error={
            "severity": "FATAL", "code": "28P01",
            "message": 'password authentication failed for user "app"'}),
    ]),
    Case("real_copy_in.conv", [
        Q(kind="startup"), R(status="ok"),
        Q(sql="COPY  items ( name, price ) FROM STDIN "),
        R(tag="COPY 2", copy={"direction": "in", "bytes": 21}),
    ]),
]
CASE_IDS = [c.file.removesuffix(".conv") for c in CASES]
RESULT_KEYS = {"sql", "status", "tag", "columns", "rows", "row_count", "latency_ms"}


def run(chunks, max_rows=5, parser=None):
    """Feed [(direction, data, ts[, missing])]; check the error contract on the way."""
    p = parser or postgres.PostgresParser(max_rows=max_rows)
    msgs: list = []
    for c in chunks:
        out = p.feed(*c)
        assert isinstance(out, list)
        if msgs and msgs[-1].type == "parse_error":
            assert out == [], "messages after a parse_error"
        for m in out:
            assert isinstance(m, mysql.Message)
        msgs += out
    return msgs, p


def check_expected(msgs, case: Case):
    got = [(m.type, m.fields) for m in msgs]
    assert len(got) == len(case.expected), [g[0] for g in got]
    for k, ((gt, gf), (et, ef)) in enumerate(zip(got, case.expected)):
        assert gt == et, (k, gt, gf)
        if et == "parse_error":
            assert ef["reason"] in gf["reason"], gf
            assert gf["offset"] == ef["offset"], gf
            assert gf["protocol"] == "postgres"
            continue
        for key, val in ef.items():
            assert gf.get(key, "<absent>") == val, (k, key, gf)
        if gt == "pg.result":
            assert RESULT_KEYS <= set(gf), gf
        if k in case.exact:
            assert set(gf) == RESULT_KEYS, gf


def strip_direction(msgs):
    return [(m.type, {k: v for k, v in m.fields.items() if k != "direction"}) for m in msgs]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("as_server", [False, True], ids=["client", "server"])
def test_fixture_whole(case: Case, as_server: bool):
    msgs, p = run(case.chunks(as_server), case.max_rows)
    check_expected(msgs, case)
    errors = [m for m in msgs if m.type == "parse_error"]
    assert p.failed == bool(errors)
    assert p.tls == case.tls
    if errors:
        assert p.feed("read", b"\x01\x00\x00\x00\x0e", 0) == []
        assert p.feed("write", b"\x01\x00\x00\x00\x0e", 0) == []
    if case.expected and case.expected[0][0] == "pg.query" and not errors:
        assert p.client_direction == ("read" if as_server else "write")
    # JSON-ready

    json.dumps([m.fields for m in msgs])


def _resplit_all(chunks, rng=None, sizes=(1, 2, 3, 5, 16, 100, 4096)):
    out = []
    for d, data, ts in chunks:
        i = 0
        while i < len(data):
            n = rng.choice(sizes)
            out.append((d, data[i:i + n], ts))
            i += n
    return out


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fixture_split_everywhere(case: Case):
    chunks = case.chunks()
    expected = strip_direction(run(chunks, case.max_rows)[0])
    total = sum(len(c[1]) for c in chunks)
    for i, (d, data, ts) in enumerate(chunks):
        if total > 5000:  # big conversations: the edges of each chunk + a sparse sample
            offs = sorted(set(range(0, min(len(data), 40))) | set(range(max(0, len(data) - 40), len(data)))
                          | set(range(0, len(data), 997)))
        else:
            offs = range(1, len(data))
        for k in offs:
            split = chunks[:i] + [(d, data[:k], ts), (d, data[k:], ts)] + chunks[i + 1:]
            assert strip_direction(run(split, case.max_rows)[0]) == expected, (i, k)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("as_server", [False, True], ids=["client", "server"])
def test_fixture_byte_at_a_time(case: Case, as_server: bool):
    chunks = case.chunks(as_server)
    expected = run(chunks, case.max_rows)[0]
    bytewise = [(d, data[j:j + 1], ts) for d, data, ts in chunks for j in range(len(data))]
    assert run(bytewise, case.max_rows)[0] == expected
    # and the other perspective gives the same messages
    other = run(case.chunks(not as_server), case.max_rows)[0]
    assert strip_direction(other) == strip_direction(expected)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fixture_random_chunking(case: Case):
    chunks = case.chunks()
    expected = run(chunks, case.max_rows)[0]
    rng = random.Random(len(case.file) * 31 + sum(map(len, (c[1] for c in chunks))))
    for _ in range(15):
        assert run(_resplit_all(chunks, rng), case.max_rows)[0] == expected
    # coalescing consecutive chunks of one direction changes nothing either
    merged: list = []
    for d, data, ts in chunks:
        if merged and merged[-1][0] == d:
            merged[-1] = (d, merged[-1][1] + data, ts)
        else:
            merged.append((d, data, ts))
    got = run(merged, case.max_rows)[0]
    assert [m.type for m in got] == [m.type for m in expected]


# --------------------------------------------------------------- behaviour


def _load_builders():
    import importlib.util
    spec = importlib.util.spec_from_file_location("pg_make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mk = _load_builders()


def test_fixture_files_are_current_and_covered():
    for name, data in mk.fixtures().items():
        assert (FIXTURES / name).read_bytes() == data, name
    assert {p.name for p in FIXTURES.glob("*.conv")} == {c.file for c in CASES}


def test_message_type_is_shared_with_mysql():
    assert postgres.Message is mysql.Message


def _logged_in():
    p = postgres.PostgresParser(max_rows=2)
    p.feed("write", mk.startup(user="u", database="d"), 0)
    p.feed("read", mk.login_ok(), MS)
    return p


def test_large_messages():
    sql = "SELECT '" + "x" * (20 << 20) + "'"
    big = "y" * (17 << 20)
    conv = [("write", mk.msg(b"Q", mk.cstr(sql)), 0),
            ("read", mk.row_desc("v") + mk.data_row(big) + mk.data_row("z") + mk.complete("SELECT 2")
             + mk.ready(), 2 * MS)]
    expected, _ = run(conv)
    assert expected[0].fields["sql"] == sql
    assert expected[1].fields["rows"] == [[big], ["z"]] and expected[1].fields["latency_ms"] == 2.0
    rng = random.Random(3)
    for _ in range(3):
        assert run(_resplit_all(conv, rng, (1, 7, 65536, 1 << 20)))[0] == expected


def test_missing_inside_a_query_message():
    sql = "INSERT INTO t VALUES ('" + "a" * 10000 + "')"
    wire = mk.msg(b"Q", mk.cstr(sql))
    p = _logged_in()
    out = p.feed("write", wire[:4000], 5 * MS, missing=len(wire) - 4000)
    assert out[0].type == "pg.query" and out[0].fields["truncated"] is True
    assert out[0].fields["sql"] == sql[:3995]
    out = p.feed("read", mk.complete("INSERT 0 1") + mk.ready(), 6 * MS)
    assert out[0].fields["tag"] == "INSERT 0 1" and out[0].fields["truncated"] is True
    assert out[0].fields["latency_ms"] == 1.0 and not p.failed


def test_missing_inside_a_data_row_then_more_rows():
    p = _logged_in()
    p.feed("write", mk.msg(b"Q", mk.cstr("SELECT v FROM t")), 0)
    resp = mk.row_desc("v") + mk.data_row("a" * 5000) + mk.data_row("b") + mk.complete("SELECT 2") + mk.ready()
    cut = resp.index(b"a" * 5000) + 1000
    assert p.feed("read", resp[:cut], MS, missing=3000) == []
    out = p.feed("read", resp[cut + 3000:], 2 * MS)
    f = out[0].fields
    assert f["truncated"] is True and f["row_count"] == 2 and f["rows"][1] == ["b"]
    assert f["rows"][0][0] == "a" * 2000  # captured bytes on both sides of the gap


def test_missing_overrunning_backend_messages_resyncs_at_next_request():
    p = _logged_in()
    p.feed("write", mk.msg(b"Q", mk.cstr("SELECT n FROM big")), 0)
    resp = mk.row_desc("n") + b"".join(mk.data_row(str(i)) for i in range(500)) + mk.complete("SELECT 500") + mk.ready()
    out = p.feed("read", resp[:1000], 3 * MS, missing=len(resp) - 1000)
    assert len(out) == 1 and out[0].type == "pg.result"
    f = out[0].fields
    assert f["truncated"] is True and f["rows"] == [["0"], ["1"]] and f["columns"] == ["n"]
    assert p.feed("read", b"\x00unframed tail", 4 * MS) == []
    assert p.feed("write", mk.msg(b"Q", mk.cstr("SELECT 2")), 5 * MS)[0].fields["sql"] == "SELECT 2"
    out = p.feed("read", mk.row_desc("x") + mk.data_row("2") + mk.complete("SELECT 1") + mk.ready(), 6 * MS)
    assert out[0].fields["rows"] == [["2"]] and "truncated" not in out[0].fields
    assert not p.failed


def test_missing_overrunning_a_frontend_message_is_an_error():
    p = _logged_in()
    wire = mk.msg(b"Q", mk.cstr("SELECT 1"))
    out = p.feed("write", wire, 0, missing=10)
    assert [m.type for m in out] == ["pg.query", "parse_error"]
    start = len(mk.startup(user="u", database="d"))
    assert out[1].fields["offset"] == start + len(wire)
    assert p.failed and p.feed("write", wire, 0) == []


def test_pipelined_simple_queries_pair_in_order():
    p = _logged_in()
    out = p.feed("write", mk.msg(b"Q", mk.cstr("SELECT 1")) + mk.msg(b"Q", mk.cstr("SELECT 2")), 10 * MS)
    assert [m.fields["sql"] for m in out] == ["SELECT 1", "SELECT 2"]
    out = p.feed("read", mk.row_desc("a") + mk.data_row("1") + mk.complete("SELECT 1") + mk.ready()
                 + mk.row_desc("b") + mk.data_row("2") + mk.complete("SELECT 1") + mk.ready(), 12 * MS)
    assert [(m.fields["sql"], m.fields["rows"]) for m in out] == [("SELECT 1", [["1"]]), ("SELECT 2", [["2"]])]


def test_password_never_reported():
    chunks = read_conv(FIXTURES / "gssenc_refused.conv")
    msgs, _ = run(chunks)
    assert "hunter2" not in json.dumps([m.fields for m in msgs])
    for c in CASES:
        if c.file.startswith("real_"):
            text = json.dumps([m.fields for m in run(c.chunks())[0]])
            assert "r=" not in text and "p=" not in text  # SCRAM payloads


def test_need_more_data_is_empty_list():
    p = postgres.PostgresParser()
    wire = mk.startup(user="u")
    assert p.feed("write", wire[:3], 0) == []
    assert p.feed("write", wire[3:9], 0) == []
    assert p.feed("write", wire[9:], 0)[0].fields["user"] == "u"


def test_bad_arguments_do_not_raise():
    p = postgres.PostgresParser()
    out = p.feed("sideways", mk.msg(b"Q", mk.cstr("SELECT 1")), 0)
    assert len(out) == 1 and out[0].type == "parse_error" and out[0].fields["direction"] is None
    p = postgres.PostgresParser()
    assert p.feed("write", "SELECT 1", 0)[-1].type == "parse_error"
    p = postgres.PostgresParser()
    assert p.feed("write", mk.msg(b"Q", mk.cstr("SELECT 1")), 0, missing="x")[-1].type == "parse_error"


def test_invalid_length_is_an_error():
    p = _logged_in()
    out = p.feed("read", b"Z\x00\x00\x00\x02", 0)
    assert out[-1].type == "parse_error" and "invalid message length" in out[-1].fields["reason"]


# ------------------------------------------------------------- robustness


def _check_contract(chunks, max_rows=5):
    p = postgres.PostgresParser(max_rows=max_rows)
    failed = False
    msgs = []
    for c in chunks:
        out = p.feed(*c)
        assert isinstance(out, list)
        if failed:
            assert out == []
        errs = [m for m in out if m.type == "parse_error"]
        assert len(errs) <= 1
        if errs:
            assert out[-1] is errs[0]
            assert not errs[0].fields["reason"].startswith("internal"), errs[0]
            failed = True
        assert p.failed == failed
        msgs += out
    return msgs


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = bytes([rng.choice((0, 0xFF, 0x44, 0x45, 0x43, 0x53, 0x5A))])
        elif op == 2 and b:
            del b[i:i + rng.randrange(1, 6)]
        else:
            del b[i:]
    return bytes(b)


SMALL = [c for c in CASES if sum(len(x[1]) for x in c.chunks()) < 5000]


@pytest.mark.parametrize("case", SMALL, ids=[c.file.removesuffix(".conv") for c in SMALL])
def test_mutated_fixtures_never_raise(case: Case):
    rng = random.Random(len(case.file) * 7919)
    chunks = case.chunks()
    for _ in range(150):
        k = rng.randrange(len(chunks))
        mutated = list(chunks)
        d, data, ts = mutated[k]
        mutated[k] = (d, _mutate(rng, data), ts)
        if rng.random() < 0.3:
            j = rng.randrange(len(mutated))
            d, data, ts = mutated[j]
            mutated[j] = (d, data, ts, rng.randrange(0, 300))
        whole = _check_contract(mutated)
        if all(len(c) == 3 for c in mutated):
            again = _check_contract(_resplit_all(mutated, rng))
            assert strip_direction(again) == strip_direction(whole)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["read", "write"]), st.binary(max_size=64),
                          st.integers(min_value=0, max_value=3)), max_size=12),
       st.sampled_from([b"", mk.startup(user="u"), mk.ssl_request(), mk.msg(b"Q", b"SELECT 1\0"),
                        mk.msg(b"P", b"\0SELECT $1\0\0\0")]))
def test_arbitrary_input_never_raises(chunks, prefix):
    feed = [("write", prefix, 0)] + [(d, b, i, m * 7) for i, (d, b, m) in enumerate(chunks)]
    msgs = _check_contract(feed)
    assert sum(m.type == "parse_error" for m in msgs) <= 1


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("data", [
    mk.startup(user="u", database="d"), mk.ssl_request(), mk.ssl_request(80877104),
    struct.pack(">IIII", 16, 80877102, 1, 2),
    mk.msg(b"Q", mk.cstr("SELECT 1")),
    mk.parse("", "SELECT $1") + mk.bind("", "", ["1"]) + mk.describe(b"P", "") + mk.execute() + mk.SYNC,
    mk.auth(10, b"SCRAM-SHA-256\0\0"),
    mk.row_desc("a") + mk.data_row("1") + mk.complete("SELECT 1") + mk.ready(),
    mk.msg(b"Q", mk.cstr("SELECT '" + "x" * 500 + "'"))[:100],
])
def test_looks_like_postgres_true(data):
    assert postgres.looks_like_postgres(data, "write") is True


@pytest.mark.parametrize("data", [
    b"", b"Q\x00", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n", b"POST /x HTTP/1.1\r\n",
    b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03", b"hello world, this is text",
    b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00" * 16, b"Q\x00\x00\x00\x09abcd",  # Q without NUL
    b"Z\x00\x00\x00\x05X", b"\x08\x00\x00\x00\x03SELECT 1",  # MySQL COM_QUERY
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
def test_looks_like_postgres_false(data):
    assert postgres.looks_like_postgres(data, "write") is False
