"""Tests for orchestrator.parsers.mysql (sans-IO MySQL/MariaDB protocol parser).

Fixtures are conversations under fixtures/mysql/: synthetic ones from
make_fixtures.py (built from the protocol spec) and real-*.conv recorded from
MariaDB 10.11 through record_proxy.py.  Each conversation is fed as the
captured CLIENT (client->server bytes are "write") and as the captured SERVER
(directions swapped); whole, every chunk split at every offset, byte by byte
and randomly re-chunked: all must give the same messages.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.parsers import mysql

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mysql"
MS = 1_000_000


def read_conv(path: Path, as_server: bool = False) -> list[tuple[str, bytes, int]]:
    """.conv -> [(direction, chunk, ts)]; client->server is "write" for a captured client."""
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
    return ("mysql.query", f)


def R(**f):
    return ("mysql.result", f)


def E(reason_part: str, offset: int):
    return ("parse_error", {"reason": reason_part, "offset": offset})


@dataclass
class Case:
    file: str
    expected: list
    tls: bool = False
    max_rows: int = 5
    exact: list = field(default_factory=list)  # indexes whose fields are checked completely

    def chunks(self, as_server=False):
        return read_conv(FIXTURES / self.file, as_server)


LOGIN_ALICE = [Q(command="login", user="alice", database="shop", connection_id=42,
                 server_version="8.0.36"),
               R(command="login", status="ok", latency_ms=1.0)]
ROWS3 = [["1", "apple", None], ["2", "pear", "ripe"], ["3", "plum", ""]]

CASES = [
    Case("deprecate_eof_session.conv", LOGIN_ALICE + [
        Q(command="COM_QUERY", sql="SELECT id, name, note FROM items"),
        R(command="COM_QUERY", sql="SELECT id, name, note FROM items", status="rows",
          columns=["id", "name", "note"], rows=ROWS3, row_count=3, warnings=0, latency_ms=1.0),
        Q(command="COM_QUERY", sql="UPDATE items SET note = 'x'"),
        R(status="ok", affected_rows=3, last_insert_id=0, warnings=1, rows=[], row_count=0),
        Q(command="COM_INIT_DB", database="other"),
        R(command="COM_INIT_DB", status="ok"),
        Q(command="COM_PING"),
        R(command="COM_PING", status="ok"),
        Q(command="COM_QUERY", sql="SELECT * FROM nope"),
        R(status="error", error_code=1146, sql_state="42S02",
          error_message="Table 'other.nope' doesn't exist"),
        Q(sql="SELECT 1 WHERE 0"),
        R(status="rows", columns=["1"], rows=[], row_count=0),
        Q(command="COM_QUIT", sql=None),
    ], exact=[3]),
    Case("eof_packets_multi.conv", LOGIN_ALICE + [
        Q(sql="SELECT a, b FROM seven; SELECT 2"),
        R(status="rows", columns=["a", "b"], row_count=7,
          rows=[[str(i), "n%d" % i] for i in range(5)]),
        R(status="rows", columns=["2"], rows=[["2"]], row_count=1),
        Q(sql="CALL p()"),
        R(status="ok", sql="CALL p()"),
        R(status="error", error_code=1305, sql="CALL p()"),
    ]),
    Case("auth_switch.conv", [
        Q(command="login", user="bob", database=None, connection_id=7, server_version="5.7.44"),
        R(command="login", status="ok", auth_plugin="auth_gssapi_client", latency_ms=5.0),
        Q(sql="SELECT USER()"),
        R(columns=["USER()"], rows=[["bob@localhost"]], row_count=1),
    ]),
    Case("tls_upgrade.conv", [], tls=True),
    Case("prepared_binary.conv", LOGIN_ALICE + [
        Q(command="COM_STMT_PREPARE",
          sql="SELECT id, score, born, tiny, name FROM t WHERE a = ? AND b = ? AND c = ?"),
        R(command="COM_STMT_PREPARE", status="ok", statement_id=9, param_count=3,
          columns=["id", "score", "born", "tiny", "name"]),
        Q(command="COM_STMT_EXECUTE", statement_id=9, params=[-5, "ab", None],
          sql="SELECT id, score, born, tiny, name FROM t WHERE a = ? AND b = ? AND c = ?"),
        R(command="COM_STMT_EXECUTE", status="rows", statement_id=9, row_count=2,
          columns=["id", "score", "born", "tiny", "name"],
          rows=[["1", "2.5", "2024-02-29", "255", "x"], ["-2", None, None, "7", ""]]),
        Q(command="COM_STMT_EXECUTE", statement_id=77, sql=None),
        R(status="error", error_code=1243),
        Q(command="COM_STMT_RESET", statement_id=9),
        R(command="COM_STMT_RESET", status="ok"),
        Q(command="COM_STMT_CLOSE", statement_id=9),
        Q(command="COM_QUERY", sql="DO 1"),
        R(command="COM_QUERY", sql="DO 1", status="ok"),
    ]),
    Case("mid_connection.conv", [
        Q(command="COM_QUERY", sql="SELECT 42 AS answer"),
        R(columns=["answer"], rows=[["42"]], row_count=1, latency_ms=1.0),
        Q(sql="INSERT INTO t VALUES (1)"),
        R(status="ok", affected_rows=1, last_insert_id=11),
    ]),
    Case("local_infile.conv", [
        Q(sql="LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t"),
        R(status="ok", affected_rows=2, local_infile="/tmp/x.csv", latency_ms=3.0),
    ]),
    Case("bad_row.conv", [Q(sql="SELECT s FROM t"), E("row value runs past", 39)]),
    Case("bad_column_count.conv", [Q(sql="SELECT s FROM t"), E("invalid column count", 0)]),
    # ---------------------------------------------------------- real MariaDB
    Case("real_cli_text.conv", [
        Q(command="login", user="app", database="shop",
          server_version="5.5.5-10.11.19-MariaDB-0+deb12u1", auth_plugin="mysql_native_password"),
        R(command="login", status="ok"),
        Q(sql="SELECT id,name,price,note,created FROM items WHERE id <= 3 ORDER BY id"),
        R(status="rows", columns=["id", "name", "price", "note", "created"], row_count=3,
          rows=[["1", "apple", "1.50", None, "2024-01-02 03:04:05"],
                ["2", "pear", "2.25", "ripe", "2024-02-03 04:05:06"],
                ["3", "plum", "0.99", "", None]]),
        Q(sql="INSERT INTO items(name,price) VALUES ('fig',3.10)"),
        R(status="ok", affected_rows=1),
        Q(sql="SELECT nosuchcol FROM items"),
        R(status="error", error_code=1054, sql_state="42S22"),
        Q(command="COM_QUIT"),
    ]),
    Case("real_prepared.conv", [
        Q(command="login", user="app"), R(status="ok"),
        Q(sql="SET NAMES 'utf8mb4'"), R(status="ok"),
        Q(), R(status="ok"), Q(), R(status="ok"), Q(), R(status="ok"),
        Q(command="COM_STMT_PREPARE"),
        R(command="COM_STMT_PREPARE", statement_id=1, param_count=2,
          columns=["id", "name", "price", "note", "created"]),
        Q(command="COM_STMT_EXECUTE", statement_id=1, params=["3", "zzz"],
          sql="SELECT id, name, price, note, created FROM items WHERE id <= ? AND name <> ? "
              "ORDER BY id"),
        R(command="COM_STMT_EXECUTE", status="rows", row_count=3,
          columns=["id", "name", "price", "note", "created"],
          rows=[["1", "apple", "1.50", None, "2024-01-02 03:04:05"],
                ["2", "pear", "2.25", "ripe", "2024-02-03 04:05:06"],
                ["3", "plum", "0.99", "", None]]),
        Q(command="COM_STMT_PREPARE", sql="INSERT INTO items(name, price, note) VALUES (?, ?, ?)"),
        R(statement_id=2, param_count=3, columns=[]),
        Q(command="COM_STMT_EXECUTE", statement_id=2, params=["kiwi", "1.25", None]),
        R(status="ok", affected_rows=1, last_insert_id=5),
        Q(command="COM_PING"), R(status="ok"),
        Q(command="COM_QUIT"),
    ]),
    Case("real_multi_big.conv", [
        Q(command="login"), R(status="ok"),
        Q(), R(), Q(), R(), Q(), R(), Q(), R(),
        Q(sql="SELECT 1 AS a; SELECT 'x' AS b, NULL AS c; UPDATE items SET note='n' WHERE id=99"),
        R(columns=["a"], rows=[["1"]]),
        R(columns=["b", "c"], rows=[["x", None]]),
        R(status="ok", affected_rows=0),
        Q(sql="SELECT SEQ FROM (SELECT 1 AS SEQ) t"), R(rows=[["1"]]),
        Q(), R(status="rows", row_count=1001, warnings=1, rows=[[str(i), "x" * 40] for i in range(1, 6)]),
        Q(command="COM_QUIT"),
    ]),
    Case("real_bad_password.conv", [
        Q(command="login", user="app"),
        R(command="login", status="error", error_code=1045, sql_state="28000",
          error_message="Access denied for user 'app'@'localhost' (using password: YES)"),
    ]),
]
CASE_IDS = [c.file.removesuffix(".conv") for c in CASES]
RESULT_KEYS = {"command", "sql", "status", "affected_rows", "last_insert_id", "warnings", "columns",
               "rows", "row_count", "error_code", "sql_state", "error_message", "latency_ms"}


def run(chunks, max_rows=5, parser=None):
    """Feed [(direction, data, ts[, missing])]; check the error contract on the way."""
    p = parser or mysql.MysqlParser(max_rows=max_rows)
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
            assert gf["protocol"] == "mysql"
            continue
        for key, val in ef.items():
            assert gf.get(key, "<absent>") == val, (k, key, gf)
        if gt == "mysql.result":
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
    if case.expected and case.expected[0][0] == "mysql.query" and not errors:
        assert p.client_direction == ("read" if as_server else "write")
    # JSON-ready
    import json
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
    spec = importlib.util.spec_from_file_location("mysql_make_fixtures", FIXTURES / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mk = _load_builders()


def test_fixture_files_are_current_and_covered():
    for name, data in mk.fixtures().items():
        assert (FIXTURES / name).read_bytes() == data, name
    assert {p.name for p in FIXTURES.glob("*.conv")} == {c.file for c in CASES}


def _login_chunks():
    return [("read", mk.pkt(0, mk.handshake()), 0),
            ("write", mk.pkt(1, mk.handshake_response()), MS),
            ("read", mk.pkt(2, mk.ok()), 2 * MS)]


def test_large_split_packets():
    sql = "SELECT '" + "x" * (0xFFFFFF + 100) + "'"
    big_row = "y" * (0xFFFFFF * 2 + 7)
    conv = _login_chunks() + [
        ("write", mk.query(sql), 10 * MS),
        ("read", mk.text_resultset(1, ["v"], [[big_row], ["z"]], True), 12 * MS),
        ("write", mk.query("SELECT 1"), 13 * MS),
        ("read", mk.text_resultset(1, ["1"], [["1"]], True), 14 * MS),
    ]
    expected, p = run(conv)
    assert [m.type for m in expected] == ["mysql.query", "mysql.result"] * 3
    q, r = expected[2].fields, expected[3].fields
    assert q["sql"] == sql and "truncated" not in q
    assert r["rows"] == [[big_row], ["z"]] and r["row_count"] == 2 and r["latency_ms"] == 2.0
    rng = random.Random(5)
    sizes = (1, 3, 65536, 1 << 20, 0xFFFFFF, 0xFFFFFF + 4)
    for _ in range(3):
        assert run(_resplit_all(conv, rng, sizes))[0] == expected


def test_missing_inside_a_query_packet():
    sql = b"INSERT INTO t VALUES ('" + b"a" * 10000 + b"')"
    wire = mk.query(sql.decode())
    p = mysql.MysqlParser()
    out = p.feed("write", wire[:4000], 5 * MS, missing=len(wire) - 4000)
    assert len(out) == 1 and out[0].type == "mysql.query"
    assert out[0].fields["truncated"] is True
    assert out[0].fields["sql"] == sql[:3995].decode()
    out = p.feed("read", mk.pkt(1, mk.ok(affected=1)), 7 * MS)
    assert out[0].fields["status"] == "ok" and out[0].fields["latency_ms"] == 2.0
    assert not p.failed


def test_missing_inside_a_row_then_more_rows():
    rs = mk.text_resultset(1, ["v"], [["a" * 5000], ["b"], ["c"]], True)
    p = mysql.MysqlParser()
    p.feed("write", mk.query("SELECT v FROM t"), 0)
    cut = rs.index(b"a" * 5000) + 1000
    tail_start = cut + 4000
    assert p.feed("read", rs[:cut], MS, missing=tail_start - cut) == []
    out = p.feed("read", rs[tail_start:], 2 * MS)
    f = out[0].fields
    assert f["truncated"] is True and f["row_count"] == 3
    assert f["rows"][1:] == [["b"], ["c"]] and f["rows"][0][0].startswith("a" * 900)


def test_missing_overrunning_a_result_resyncs_at_next_command():
    rows = [[str(i), "v" * 50] for i in range(200)]
    rs = mk.text_resultset(1, ["n", "v"], rows, True)
    p = mysql.MysqlParser(max_rows=2)
    p.feed("write", mk.query("SELECT n, v FROM big"), 0)
    out = p.feed("read", rs[:4096], 3 * MS, missing=len(rs) - 4096)
    assert len(out) == 1 and out[0].type == "mysql.result"
    f = out[0].fields
    assert f["truncated"] is True and f["rows"] == [["0", "v" * 50], ["1", "v" * 50]]
    assert f["row_count"] < 200 and f["latency_ms"] == 3.0
    assert p.feed("read", b"garbage that is not framed at all", 4 * MS) == []
    assert p.feed("write", mk.query("SELECT 2"), 5 * MS)[0].fields["sql"] == "SELECT 2"
    out = p.feed("read", mk.text_resultset(1, ["2"], [["2"]], True), 6 * MS)
    assert out[0].fields["rows"] == [["2"]] and "truncated" not in out[0].fields
    assert not p.failed


def test_missing_overrunning_a_client_packet_is_an_error():
    p = mysql.MysqlParser()
    p.feed("write", mk.query("SELECT 1"), 0)
    out = p.feed("write", mk.query("SELECT 2"), 0, missing=50)
    assert [m.type for m in out] == ["mysql.query", "parse_error"]
    assert out[1].fields["offset"] == 2 * 13 and out[1].fields["protocol"] == "mysql"
    assert p.failed and p.feed("write", mk.query("SELECT 3"), 0) == []


def test_missing_in_a_header_is_an_error():
    p = mysql.MysqlParser()
    p.feed("write", mk.query("SELECT 1"), 0)
    out = p.feed("write", b"\x09\x00", 0, missing=5)
    assert len(out) == 1 and out[0].type == "parse_error"


def test_missing_before_anything_known_is_skipped():
    p = mysql.MysqlParser()
    assert p.feed("read", b"", 0, missing=100) == []
    out = p.feed("write", mk.query("SELECT 1"), MS)
    assert out[0].fields["sql"] == "SELECT 1"


def test_need_more_data_is_empty_list():
    p = mysql.MysqlParser()
    wire = mk.query("SELECT 1")
    assert p.feed("write", wire[:3], 0) == []
    assert p.feed("write", b"", 0) == []
    assert p.feed("write", wire[3:], 0)[0].fields["sql"] == "SELECT 1"


def test_ts_is_taken_from_the_completing_chunk():
    p = mysql.MysqlParser()
    wire = mk.query("SELECT 1")
    p.feed("write", wire[:6], 1 * MS)
    p.feed("write", wire[6:], 3 * MS)
    out = p.feed("read", mk.pkt(1, mk.ok()), 3 * MS + 123456)
    assert out[0].fields["latency_ms"] == 0.123


def test_max_rows_zero_counts_only():
    p = mysql.MysqlParser(max_rows=0)
    p.feed("write", mk.query("SELECT 1"), 0)
    out = p.feed("read", mk.text_resultset(1, ["a"], [["1"], ["2"]], True), 0)
    assert out[0].fields["rows"] == [] and out[0].fields["row_count"] == 2


def test_bad_arguments_do_not_raise():
    p = mysql.MysqlParser()
    out = p.feed("sideways", b"\x01\x00\x00\x00\x0e", 0)
    assert len(out) == 1 and out[0].type == "parse_error" and out[0].fields["direction"] is None
    p = mysql.MysqlParser()
    out = p.feed("write", "SELECT 1", 0)
    assert len(out) == 1 and out[0].type == "parse_error"
    p = mysql.MysqlParser()
    out = p.feed("write", mk.query("SELECT 1"), 0, missing="x")
    assert out[-1].type == "parse_error"


# ------------------------------------------------------------- robustness


def _check_contract(chunks, max_rows=5):
    p = mysql.MysqlParser(max_rows=max_rows)
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
            b[i:i] = bytes([rng.choice((0, 1, 0xFB, 0xFC, 0xFE, 0xFF, 3))])
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
       st.sampled_from([b"", b"\x08\x00\x00\x00\x03SELECT 1", b"\x01\x00\x00\x00\x0e",
                        b"\x0a\x00\x00\x00\x0a" + b"8.0\x00" + bytes(5)]))
def test_arbitrary_input_never_raises(chunks, prefix):
    feed = [("write", prefix, 0)] + [(d, b, i, m * 7) for i, (d, b, m) in enumerate(chunks)]
    msgs = _check_contract(feed)
    assert sum(m.type == "parse_error" for m in msgs) <= 1


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("data", [
    mk.pkt(0, mk.handshake()),
    mk.query("SELECT 1"),
    mk.query("select *\nfrom t"),
    mk.pkt(0, b"\x0e"),
    mk.pkt(0, b"\x01"),
    mk.pkt(0, b"\x02shop"),
    mk.pkt(0, b"\x17" + struct.pack("<IBI", 1, 0, 1)),
    mk.query("SELECT '" + "x" * 300 + "'")[:100],
])
def test_looks_like_mysql_true(data):
    assert mysql.looks_like_mysql(data, "write") is True


@pytest.mark.parametrize("data", [
    b"", b"\x01\x00\x00", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
    b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03", b"\x16\x03\x01\x00\x1a" + bytes(26),
    b"hello world, this is text", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x00" * 16,
    mk.pkt(1, mk.ok()), mk.pkt(0, b"\x03\xff\xfe\x00\x01"),
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
    b"Q\x00\x00\x00\x0dSELECT 1\x00",
])
def test_looks_like_mysql_false(data):
    assert mysql.looks_like_mysql(data, "write") is False
