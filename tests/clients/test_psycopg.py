"""psycopg 3 client tests against a PostgreSQL-compatible server.

Which server:
  * STROM_BIN=/path/to/strom   start `$STROM_BIN --listen 127.0.0.1:0 --ready-file ... --data-dir <tmpdir>`
                               and connect as user=root dbname=dev (what scripts/test.sh does);
  * PG_TEST_DSN="host=... port=... user=... dbname=..."
                               run the same tests against an existing server, e.g. a real PostgreSQL,
                               to check the tests themselves.

Covers the extended query protocol with parameters (`%s`, and `%b` for binary parameters), results in
binary and text format, named prepared statements, executemany (pipeline mode), command tags /
rowcount, and the SQLSTATEs psycopg maps to exception classes. All connections are autocommit.

Run: STROM_BIN=target/debug/strom python -m pytest -q tests/clients
"""

import os
import signal
import subprocess
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import psycopg.errors
import pytest
from psycopg.types.json import Jsonb

STARTUP_TIMEOUT = 30.0

# ---------------------------------------------------------------------------------------------
# server under test
# ---------------------------------------------------------------------------------------------


def _ready_port(path: str):
    """The port in the server's ready file (written whole once it listens), or None."""
    try:
        with open(path) as f:
            return int(f.read().strip().rsplit(":", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def _read(path: str, limit: int = 20000) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


@pytest.fixture(scope="module")
def dsn():
    strom_bin = os.environ.get("STROM_BIN")
    if strom_bin:
        with tempfile.TemporaryDirectory(prefix="strom-pytest-") as tmp:
            data_dir = os.path.join(tmp, "data")
            log_path = os.path.join(tmp, "server.log")
            ready = os.path.join(tmp, "ready")
            # Port 0: the server binds a port the kernel picks and reports it in `ready`,
            # so nothing can take the port between a probe and the bind.
            cmd = [strom_bin, "--listen", "127.0.0.1:0", "--ready-file", ready,
                   "--data-dir", data_dir]
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                deadline = time.monotonic() + STARTUP_TIMEOUT
                while (port := _ready_port(ready)) is None:
                    if proc.poll() is not None:
                        pytest.fail(
                            f"server {cmd} exited with code {proc.returncode} before listening; "
                            f"its output:\n{_read(log_path)}"
                        )
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"server {cmd} did not report listening within "
                            f"{STARTUP_TIMEOUT:.0f}s; its output:\n{_read(log_path)}"
                        )
                    time.sleep(0.1)
                yield f"host=127.0.0.1 port={port} user=root dbname=dev connect_timeout=10"
                if proc.poll() is not None:
                    pytest.fail(
                        f"server exited with code {proc.returncode} during the tests; "
                        f"its output:\n{_read(log_path)}"
                    )
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
    elif os.environ.get("PG_TEST_DSN"):
        yield os.environ["PG_TEST_DSN"]
    else:
        pytest.fail("set STROM_BIN (server binary to start) or PG_TEST_DSN (server to connect to)")


@pytest.fixture(scope="module")
def conn(dsn):
    c = psycopg.connect(dsn, autocommit=True)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

COLUMNS = "id, feeder, kw, ok, n, s, amount, d, ts, tstz, b, j"
# type OIDs PostgreSQL reports for those columns
COLUMN_OIDS = [20, 1043, 701, 16, 23, 21, 1700, 1082, 1114, 1184, 17, 3802]

UTC = timezone.utc
PLUS2 = timezone(timedelta(hours=2))

# (id, feeder, kw, ok, n, s, amount, d, ts, tstz, b, j) exactly as psycopg should return them.
ROW1 = (1, "f1", 1.5, True, 10, 3, Decimal("12.50"), date(2024, 1, 2),
        datetime(2024, 1, 2, 3, 4, 5, 123456), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        b"\x00\x01\xffabc", {"a": 1, "b": [1, 2], "c": "x"})
ROW2 = (2, "f1", 2.25, False, -7, -2, Decimal("-0.01"), date(2024, 2, 29),
        datetime(2024, 2, 29, 23, 59, 59), datetime(2024, 6, 1, 12, 0, 0, tzinfo=PLUS2),
        b"", {"nested": {"k": None, "t": True}, "arr": []})
ROW3 = (3, None, None, None, None, None, None, None, None, None, None, None)
# inserted with executemany
ROW4 = (4, "f2", 0.5, True, 2147483647, -32768, Decimal("99999999.99"), date(1999, 12, 31),
        datetime(1999, 12, 31, 23, 59, 59, 999999), datetime(1970, 1, 1, 0, 0, 0, tzinfo=UTC),
        bytes(range(256)), [1, "two", 3.5])
ROW5 = (9223372036854775807, "f2", 100.25, False, -2147483648, 32767, Decimal("0.00"),
        date(2000, 1, 1), datetime(2000, 1, 1, 0, 0, 0), datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
        b"\\x", {"s": "quote ' and \" and \\ and ü"})
ALL_ROWS = [ROW1, ROW2, ROW3, ROW4, ROW5]

INSERT = f"INSERT INTO py_meter ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


def _params(row):
    """Row values as query parameters: json values are wrapped in Jsonb."""
    *head, j = row
    return (*head, None if j is None else Jsonb(j))


def _assert_rows(got, expected):
    """Exact comparison, Python types included (True == 1 and 1.0 == 1 would otherwise pass)."""
    assert len(got) == len(expected), f"{len(got)} rows, expected {len(expected)}:\n{got}"
    for g, e in zip(got, expected):
        assert len(g) == len(e), f"row {g} has {len(g)} columns, expected {len(e)}"
        for i, (gv, ev) in enumerate(zip(g, e)):
            where = f"column {i} of row {g[0]!r}"
            if ev is None:
                assert gv is None, f"{where}: {gv!r}, expected NULL"
                continue
            assert type(gv) is type(ev), f"{where}: {gv!r} ({type(gv).__name__}), expected {ev!r}"
            assert gv == ev, f"{where}: {gv!r}, expected {ev!r}"
            if isinstance(ev, Decimal):
                assert gv.as_tuple().exponent == ev.as_tuple().exponent, f"{where}: scale of {gv!r} vs {ev!r}"
            if isinstance(ev, datetime):
                assert (gv.tzinfo is None) == (ev.tzinfo is None), f"{where}: {gv!r} vs {ev!r} (tzinfo)"


def _oids(cur):
    return [d.type_code for d in cur.description]


def _assert_format(cur, binary):
    """The server sent every column in the format asked for (0 = text, 1 = binary)."""
    want = 1 if binary else 0
    got = [cur.pgresult.fformat(i) for i in range(cur.pgresult.nfields)]
    assert got == [want] * len(got), f"result column formats {got}, expected all {want}"


@pytest.fixture
def meter(conn):
    """Fresh py_meter holding ALL_ROWS; inserted with parameters and executemany."""
    conn.execute("DROP TABLE IF EXISTS py_meter")
    conn.execute(
        "CREATE TABLE py_meter (id BIGINT PRIMARY KEY, feeder VARCHAR, kw DOUBLE PRECISION, ok BOOLEAN, "
        "n INTEGER, s SMALLINT, amount NUMERIC(10,2), d DATE, ts TIMESTAMP, tstz TIMESTAMPTZ, "
        "b BYTEA, j JSONB)"
    )
    with conn.cursor() as cur:
        for row in (ROW1, ROW2, ROW3):
            cur.execute(INSERT, _params(row))
            assert cur.rowcount == 1
        cur.executemany(INSERT, [_params(ROW4), _params(ROW5)])
    return conn


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_insert_with_parameters(meter):
    cur = meter.execute("SELECT count(*) FROM py_meter")
    assert cur.fetchone() == (5,)
    with meter.cursor() as cur:
        cur.execute(INSERT, (6, "f3", -1.0, None, None, None, Decimal("1.5"), None, None, None, None, None))
        assert cur.rowcount == 1
        assert cur.statusmessage == "INSERT 0 1"
    # NUMERIC(10,2) stores 1.5 as 1.50
    row = meter.execute("SELECT amount, kw FROM py_meter WHERE id = %s", (6,), binary=True).fetchone()
    _assert_rows([row], [(Decimal("1.50"), -1.0)])


def test_executemany(meter):
    with meter.cursor() as cur:
        cur.executemany(
            "INSERT INTO py_meter (id, feeder, kw) VALUES (%s, %s, %s)",
            [(10, "f9", 1.0), (11, "f9", 2.0), (12, None, 3.0)],
        )
        assert cur.rowcount == 3
    rows = meter.execute(
        "SELECT id, feeder, kw FROM py_meter WHERE id >= %s AND id < %s ORDER BY id", (10, 100)
    ).fetchall()
    _assert_rows(rows, [(10, "f9", 1.0), (11, "f9", 2.0), (12, None, 3.0)])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_select_by_id(meter, binary):
    with meter.cursor(binary=binary) as cur:
        for row in ALL_ROWS:
            cur.execute(f"SELECT {COLUMNS} FROM py_meter WHERE id = %s", (row[0],))
            assert _oids(cur) == COLUMN_OIDS
            _assert_format(cur, binary)
            assert cur.rowcount == 1
            _assert_rows(cur.fetchall(), [row])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_select_where_two_params(meter, binary):
    q = f"SELECT {COLUMNS} FROM py_meter WHERE feeder = %s AND kw > %s ORDER BY id"
    cur = meter.execute(q, ("f1", 1.0), binary=binary)
    assert _oids(cur) == COLUMN_OIDS
    _assert_format(cur, binary)
    _assert_rows(cur.fetchall(), [ROW1, ROW2])
    cur = meter.execute(q, ("f1", 2.0), binary=binary)
    _assert_rows(cur.fetchall(), [ROW2])
    cur = meter.execute(q, ("f2", 0.25), binary=binary)
    _assert_rows(cur.fetchall(), [ROW4, ROW5])
    cur = meter.execute(q, ("nope", 0.0), binary=binary)
    assert cur.fetchall() == []
    assert _oids(cur) == COLUMN_OIDS


def test_select_all_text_simple_protocol(meter):
    # no parameters + text results: psycopg uses the simple query protocol
    cur = meter.execute(f"SELECT {COLUMNS} FROM py_meter ORDER BY id")
    assert _oids(cur) == COLUMN_OIDS
    _assert_format(cur, False)
    _assert_rows(cur.fetchall(), ALL_ROWS)


def test_select_all_binary_no_params(meter):
    cur = meter.execute(f"SELECT {COLUMNS} FROM py_meter ORDER BY id", binary=True)
    assert _oids(cur) == COLUMN_OIDS
    _assert_format(cur, True)
    _assert_rows(cur.fetchall(), ALL_ROWS)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_binary_parameters(meter, binary):
    # %b: parameters sent in binary format
    q = f"SELECT {COLUMNS} FROM py_meter WHERE id = %b AND feeder = %b AND amount = %b AND d = %b"
    cur = meter.execute(q, (ROW4[0], ROW4[1], ROW4[6], ROW4[7]), binary=binary)
    _assert_format(cur, binary)
    _assert_rows(cur.fetchall(), [ROW4])
    q = f"SELECT {COLUMNS} FROM py_meter WHERE ts = %b OR tstz = %b OR b = %b ORDER BY id"
    cur = meter.execute(q, (ROW1[8], ROW2[9], ROW5[10]), binary=binary)
    _assert_rows(cur.fetchall(), [ROW1, ROW2, ROW5])


def test_prepared_statement_reuse(meter):
    # prepare=True makes psycopg use a named prepared statement, executed many times
    with meter.cursor(binary=True) as cur:
        for _ in range(3):
            for row in ALL_ROWS:
                cur.execute(f"SELECT {COLUMNS} FROM py_meter WHERE id = %s", (row[0],), prepare=True)
                _assert_rows(cur.fetchall(), [row])


def test_null_parameter(meter):
    # comparing with NULL matches nothing; IS NULL finds the all-NULL row
    cur = meter.execute("SELECT id FROM py_meter WHERE feeder = %s", (None,), binary=True)
    assert cur.fetchall() == []
    cur = meter.execute("SELECT id FROM py_meter WHERE feeder IS NULL AND id = %s", (3,), binary=True)
    assert cur.fetchall() == [(3,)]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_aggregate_group_by(meter, binary):
    cur = meter.execute("SELECT feeder, sum(kw), count(*) FROM py_meter GROUP BY feeder ORDER BY 1", binary=binary)
    assert _oids(cur) == [1043, 701, 20]
    _assert_format(cur, binary)
    _assert_rows(cur.fetchall(), [("f1", 3.75, 2), ("f2", 100.75, 2), (None, None, 1)])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_aggregate_with_parameter(meter, binary):
    cur = meter.execute(
        "SELECT feeder, sum(kw), count(*), min(n), max(amount) FROM py_meter WHERE kw > %s "
        "GROUP BY feeder ORDER BY feeder",
        (0.75,), binary=binary,
    )
    _assert_rows(cur.fetchall(), [("f1", 3.75, 2, -7, Decimal("12.50")), ("f2", 100.25, 1, -2147483648, Decimal("0.00"))])


def test_update_with_parameters(meter):
    with meter.cursor() as cur:
        cur.execute("UPDATE py_meter SET kw = %s, ok = %s WHERE feeder = %s", (7.5, None, "f1"))
        assert cur.rowcount == 2
        assert cur.statusmessage == "UPDATE 2"
        cur.execute("UPDATE py_meter SET kw = %s WHERE id = %s", (1.0, 424242))
        assert cur.rowcount == 0
    cur = meter.execute("SELECT id, kw, ok FROM py_meter WHERE feeder = %s ORDER BY id", ("f1",), binary=True)
    _assert_rows(cur.fetchall(), [(1, 7.5, None), (2, 7.5, None)])
    cur = meter.execute("SELECT id, kw FROM py_meter WHERE feeder = %s ORDER BY id", ("f2",), binary=True)
    _assert_rows(cur.fetchall(), [(4, 0.5), (ROW5[0], 100.25)])


def test_delete_with_parameters(meter):
    with meter.cursor() as cur:
        cur.execute("DELETE FROM py_meter WHERE id = %s", (2,))
        assert cur.rowcount == 1
        assert cur.statusmessage == "DELETE 1"
        cur.execute("DELETE FROM py_meter WHERE id = %s", (2,))
        assert cur.rowcount == 0
        cur.execute("DELETE FROM py_meter WHERE feeder = %s", ("f2",))
        assert cur.rowcount == 2
    cur = meter.execute("SELECT id FROM py_meter ORDER BY id", binary=True)
    assert cur.fetchall() == [(1,), (3,)]


def test_unique_violation_keeps_connection_usable(meter):
    with pytest.raises(psycopg.errors.UniqueViolation) as exc:
        meter.execute(INSERT, _params(ROW1))
    assert exc.value.sqlstate == "23505"
    with pytest.raises(psycopg.errors.UniqueViolation):
        meter.execute("INSERT INTO py_meter (id) VALUES (1)")   # simple protocol too
    cur = meter.execute("SELECT count(*) FROM py_meter WHERE id = %s", (1,))
    assert cur.fetchone() == (1,)
    cur = meter.execute("SELECT kw FROM py_meter WHERE id = %s", (1,), binary=True)
    assert cur.fetchone() == (1.5,)          # the failed insert changed nothing


def test_syntax_error_keeps_connection_usable(conn):
    with pytest.raises(psycopg.errors.SyntaxError) as exc:
        conn.execute("SELEC 1")
    assert exc.value.sqlstate == "42601"
    with pytest.raises(psycopg.errors.SyntaxError):
        conn.execute("SELECT FROM WHERE %s", (1,))   # extended protocol
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conn.execute("SELECT %s::int + 1", (41,), binary=True).fetchone() == (42,)


def test_undefined_table(conn):
    with pytest.raises(psycopg.errors.UndefinedTable) as exc:
        conn.execute("SELECT * FROM py_no_such_table")
    assert exc.value.sqlstate == "42P01"
    with pytest.raises(psycopg.errors.UndefinedTable):
        conn.execute("SELECT * FROM py_no_such_table WHERE id = %s", (1,), binary=True)
    assert conn.execute("SELECT 2").fetchone() == (2,)


def test_second_connection_sees_data(meter, dsn):
    with psycopg.connect(dsn, autocommit=True) as other:
        cur = other.execute(f"SELECT {COLUMNS} FROM py_meter WHERE id = %s", (ROW4[0],), binary=True)
        _assert_rows(cur.fetchall(), [ROW4])
