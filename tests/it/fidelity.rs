//! Output fidelity: the text Strom sends for every type equals PostgreSQL's.
//!
//! One table with a column of each supported type is filled with edge values (NULL,
//! extremes, NaN and infinities, negative zero, scales, quotes and backslashes, unicode,
//! dates before 1970 and in leap years, mixed intervals, arrays with NULLs and quoting,
//! nested JSON) on Strom and on the reference PostgreSQL (`TEST_PG_URL`). A materialized
//! view on Strom and a plain view on PostgreSQL select the columns and expressions over
//! them; the rows must be identical as text, over the simple protocol and (on Strom) the
//! extended protocol, in two session time zones.

use crate::pgclient::{Reply, TextClient};
use crate::server::{reference_pg, text_rows, TestServer};

const TABLE: &str = "CREATE TABLE fid_t (
    id INT PRIMARY KEY, i2 SMALLINT, i4 INT, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION,
    n NUMERIC(12,4), nu NUMERIC, b BOOLEAN, t TEXT, vc VARCHAR(20), d DATE, tm TIME,
    ts TIMESTAMP, tz TIMESTAMPTZ, iv INTERVAL, by BYTEA, j JSONB, ai INT[], at TEXT[])";

const ROWS: &[&str] = &[
    "(1, 1, 1, 1, 1.5, 0.1, 1.5, 1.5, true, 'plain', 'v', '2024-02-29', '10:37:00', \
     '2024-02-29 23:59:59.5', '2024-03-01 10:00:00+00', '1 day 02:03:04', '\\x00ff', \
     '{\"b\": [1, 2.5, null], \"a\": \"x\"}', '{1,NULL,3}', '{a,\"b c\",NULL,\"q\\\"t\"}')",
    "(2, -32768, -2147483648, -9223372036854775808, -0.0, -1e-7, -12345678.9999, \
     -0.000123, false, '', '日本語', '1969-12-31', '00:00:00', '1900-01-01 00:00:00', \
     '1969-07-20 20:17:40-04', '-1 mons +2 days -00:00:01', '\\x', '[]', '{}', '{}')",
    "(3, 32767, 2147483647, 9223372036854775807, 'NaN', 'Infinity', 99999999.9999, \
     123456789.123456789, NULL, 'quote''s \\ back', 'tab\there', '0001-01-01', '23:59:59.999999', \
     '2262-04-11 00:00:00', '2000-01-01 00:00:00+05:30', '1 year 2 mons 3 days 04:05:06.789', \
     '\\x41', '{\"k\": {\"z\": true, \"aa\": false}}', '{-1}', '{\"\"}')",
    "(4, NULL, NULL, NULL, '-Infinity', 3.141592653589793, 0, 0, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, '0', NULL, 'null', NULL, NULL)",
    "(5, 0, 0, 0, 3.4028235e38, 1.7976931348623157e308, 0.0001, 10, true, 'NULL', 'x', \
     '2000-01-01', '12:00:00', '2000-01-01 00:00:00.000001', '2024-10-27 01:30:00+01', \
     '-3 days', '\\x5c', '\"text\"', '{0,0}', '{NULL}')",
];

const VIEW: &str =
    "SELECT id, i2, i4, i8, f4, f8, n, nu, b, t, vc, d, tm, ts, tz, iv, by, j, ai, at, \
    i4 - i2 AS diff_i, f8 / 2 AS f8half, n * 2 AS n2, n + 0.5 AS nplus, -n AS nneg, \
    ts + iv AS later, d + 1 AS dnext, date_trunc('month', ts) AS month, \
    upper(t) AS up, j -> 'b' AS jb, j ->> 'a' AS ja, coalesce(b, false) AS b0, \
    EXTRACT(year FROM ts) AS yr FROM fid_t";

/// The first column where two result sets differ, for a readable failure.
fn assert_same(what: &str, got: &[Vec<Option<String>>], want: &[Vec<Option<String>>]) {
    assert_eq!(got.len(), want.len(), "{what}: row counts differ");
    let names: Vec<&str> = VIEW
        .trim_start_matches("SELECT ")
        .split(" FROM ")
        .next()
        .unwrap()
        .split(", ")
        .collect();
    for (g, w) in got.iter().zip(want) {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            assert_eq!(
                a,
                b,
                "{what}: row id={:?}, column {i} ({})",
                g[0],
                names.get(i).unwrap_or(&"?")
            );
        }
    }
}

#[tokio::test]
async fn every_type_prints_as_postgres_prints_it() {
    let pg = reference_pg().await;
    let server = TestServer::start();
    let strom = server.client().await;
    let view = VIEW;
    pg.batch_execute("DROP VIEW IF EXISTS fid_v; DROP TABLE IF EXISTS fid_t")
        .await
        .unwrap();
    let insert = format!("INSERT INTO fid_t VALUES {}", ROWS.join(", "));
    for c in [&pg, &strom] {
        c.batch_execute(TABLE).await.unwrap();
        c.batch_execute(&insert).await.unwrap();
    }
    pg.batch_execute(&format!("CREATE VIEW fid_v AS {view}"))
        .await
        .unwrap();
    strom
        .batch_execute(&format!("CREATE MATERIALIZED VIEW fid_v AS {view}"))
        .await
        .unwrap();
    let mut text = TextClient::connect(server.port).await.unwrap();
    for zone in ["UTC", "Asia/Shanghai"] {
        let set = format!("SET TIME ZONE '{zone}'");
        for c in [&pg, &strom] {
            c.batch_execute(&set).await.unwrap();
        }
        text.run(&set).await.unwrap().unwrap();
        for query in [
            "SELECT * FROM fid_v ORDER BY id",
            "SELECT * FROM fid_t ORDER BY id",
        ] {
            let want = text_rows(&pg, query).await;
            let got = text_rows(&strom, query).await;
            assert_same(&format!("simple, {zone}, {query}"), &got, &want);
            let Reply::Rows(extended) = text.run(query).await.unwrap().unwrap() else {
                panic!("{query}: no rows");
            };
            assert_same(&format!("extended, {zone}, {query}"), &extended, &want);
        }
    }
    pg.batch_execute("DROP VIEW fid_v; DROP TABLE fid_t")
        .await
        .unwrap();
}
