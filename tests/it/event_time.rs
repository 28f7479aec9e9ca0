//! Event time through the real server:
//!
//! - **Differential**: out-of-order events (some behind the watermark) inserted step by
//!   step; after every step each `EMIT ON WINDOW CLOSE` view must equal the same aggregate
//!   computed from scratch (a plain `SELECT` over the table, which holds exactly the on-time
//!   rows) restricted to the windows that ended by the watermark, and the continuously
//!   updated views (an interval self-join, whose state is cleaned by the watermark, and
//!   a view whose plan shares one aggregation between both sides of a join)
//!   must equal it over all windows. Late rows plus stored rows are every row
//!   sent. Half way the server is killed with SIGKILL and restarted. `STROM_EVENT_SEED`
//!   and `STROM_EVENT_STEPS` run other workloads.
//! - **Bounded state**: an endless stream of windows through an EOWC view, a
//!   continuously updated windowed view and a temporal filter (the last two minutes, with
//!   the test clock following the stream); the state in RocksDB
//!   (`strom_catalog.view_state`) stays flat. `STROM_SOAK_EVENTS` (default 60,000) sets
//!   the number of events; `docs/benchmarks.md` records a 10-million-event run.

use std::time::Instant;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::server::TestServer;

async fn rows(c: &Client, sql: &str) -> Vec<String> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut out: Vec<String> = msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

async fn one(c: &Client, sql: &str) -> String {
    rows(c, sql).await.pop().unwrap_or_default()
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eowc_windows_equal_the_aggregate_from_scratch_over_on_time_rows() {
    let seed: u64 = std::env::var("STROM_EVENT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_e7e7);
    let steps: u64 = std::env::var("STROM_EVENT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let mut server = TestServer::start();
    let mut c = server.client().await;
    c.batch_execute(
        "SET TimeZone = 'UTC';
         CREATE TABLE ev (point_id VARCHAR, ts TIMESTAMPTZ, value INT,
                          WATERMARK FOR ts AS ts - INTERVAL '20' SECOND);",
    )
    .await
    .unwrap();
    // (view, its query, the reference over the table, whether it emits on close)
    let tumble = "SELECT point_id, window_start, window_end, count(*) AS n, sum(value) AS s, min(value) AS lo, max(value) AS hi FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY point_id, window_start, window_end";
    let hop = "SELECT window_start, window_end, count(*) AS n, sum(value) AS s FROM HOP(ev, ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE) GROUP BY window_start, window_end";
    let live = "SELECT point_id, window_start, count(*) AS n, max(value) AS hi FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY point_id, window_start";
    // An interval self-join: its state is cleaned by the watermark as it goes.
    let interval = "SELECT a.point_id, count(*) AS pairs, sum(b.value) AS s FROM ev a JOIN ev b ON a.point_id = b.point_id AND b.ts BETWEEN a.ts - INTERVAL '10' SECOND AND a.ts + INTERVAL '10' SECOND GROUP BY a.point_id";
    let session = "SELECT point_id, window_start, window_end, count(*) AS n, sum(value) AS s FROM SESSION(ev, ts, INTERVAL '15' SECOND, point_id) GROUP BY point_id, window_start, window_end";
    // Top-2 points per window, emitted once per window.
    let top = "SELECT * FROM (SELECT point_id, window_start, window_end, n, row_number() OVER (PARTITION BY window_start ORDER BY n DESC, point_id) AS rn FROM (SELECT point_id, window_start, window_end, count(*) AS n FROM TUMBLE(ev, ts, INTERVAL '1' MINUTE) GROUP BY point_id, window_start, window_end) a) b WHERE rn <= 2";
    // Nexmark q5's shape: both sides count the same HOP windows per point (in a different
    // key order); the plan computes the count once and shares it (state version 4).
    let hot = "SELECT a.point_id, a.window_start, a.n FROM (SELECT point_id, window_start, count(*) AS n FROM HOP(ev, ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE) GROUP BY window_start, point_id) a JOIN (SELECT window_start, max(n) AS maxn FROM (SELECT window_start, count(*) AS n FROM HOP(ev, ts, INTERVAL '30' SECOND, INTERVAL '1' MINUTE) GROUP BY point_id, window_start) c GROUP BY window_start) m ON a.window_start = m.window_start AND a.n >= m.maxn";
    let views = [
        ("ev_hot", hot, false),
        ("ev_top", top, true),
        ("ev_tumble", tumble, true),
        ("ev_hop", hop, true),
        ("ev_live", live, false),
        ("ev_interval", interval, false),
        ("ev_session", session, true),
    ];
    // Sessions from scratch (SESSION itself works only in views): gaps and islands.
    let session_reference = |wm: &str| {
        format!(
            "SELECT point_id, min(ts) AS window_start, max(ts) + INTERVAL '15' SECOND AS window_end, count(*) AS n, sum(value) AS s
             FROM (SELECT *, sum(new) OVER (PARTITION BY point_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS sid
                   FROM (SELECT *, CASE WHEN ts - lag(ts) OVER (PARTITION BY point_id ORDER BY ts) < INTERVAL '15' SECOND THEN 0 ELSE 1 END AS new
                         FROM ev WHERE ts IS NOT NULL) a) b
             GROUP BY point_id, sid HAVING max(ts) + INTERVAL '15' SECOND <= TIMESTAMPTZ '{wm}'"
        )
    };
    for (name, q, eowc) in views {
        let emit = if eowc { " EMIT ON WINDOW CLOSE" } else { "" };
        c.batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {q}{emit}"))
            .await
            .unwrap();
    }
    let mut rng = Rng(seed | 1);
    let base = 1_704_067_200i64; // 2024-01-01 00:00:00 UTC
    let mut sent = 0u64;
    let mut closed_seen = 0usize;
    for step in 0..steps {
        if step == steps / 2 {
            // Half way, kill the server: watermarks and open windows must survive.
            drop(c);
            server.kill();
            server.spawn();
            c = server.client().await;
            c.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
        }
        // Time moves 20 s a step; events scatter from 45 s before to 10 s after it, so
        // some fall behind the watermark (20 s before the newest event).
        let now = base + step as i64 * 20;
        let values: Vec<String> = (0..40)
            .map(|_| {
                let t = now - 45 + rng.below(56) as i64;
                let ts = if rng.below(50) == 0 {
                    "NULL".to_string()
                } else {
                    format!("to_timestamp({t})")
                };
                format!("('p{}', {ts}, {})", rng.below(4), rng.below(100))
            })
            .collect();
        c.batch_execute(&format!("INSERT INTO ev VALUES {}", values.join(", ")))
            .await
            .unwrap();
        sent += 40;
        let wm = one(
            &c,
            "SELECT watermark FROM strom_catalog.watermarks WHERE relation_name = 'ev'",
        )
        .await;
        for (name, q, eowc) in views {
            let got = rows(&c, &format!("SELECT * FROM {name}")).await;
            let want = if name == "ev_session" {
                rows(&c, &session_reference(&wm)).await
            } else if eowc {
                rows(
                    &c,
                    &format!("SELECT * FROM ({q}) r WHERE window_end <= TIMESTAMPTZ '{wm}'"),
                )
                .await
            } else {
                rows(&c, q).await
            };
            assert_eq!(
                got, want,
                "view {name} after step {step} (seed {seed}, watermark {wm})"
            );
            if eowc {
                closed_seen = closed_seen.max(got.len());
            }
        }
    }
    let stored: u64 = one(&c, "SELECT count(*) FROM ev").await.parse().unwrap();
    let late: u64 = one(
        &c,
        "SELECT count(*) FROM strom_catalog.late_rows WHERE relation_name = 'ev'",
    )
    .await
    .parse()
    .unwrap();
    assert_eq!(stored + late, sent, "every row is stored or kept as late");
    assert!(late > 0, "the workload produced late rows");
    assert!(closed_seen > 5, "windows closed during the run");
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS+00`.
fn civil_time(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn state_keys(c: &Client) -> (i64, i64) {
    let r = one(
        c,
        "SELECT sum(state_keys), sum(state_bytes) FROM strom_catalog.view_state",
    )
    .await;
    let mut it = r.split('|').map(|v| v.parse::<i64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_stays_bounded_over_an_endless_stream() {
    let events: u64 = std::env::var("STROM_SOAK_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60_000);
    const PER_WINDOW: u64 = 2_000; // 200 points x 10 readings per 1-minute window
    let windows = events / PER_WINDOW;
    let server = TestServer::start_with_env(&[], &[("STROM_TEST_CLOCK", "1")]);
    let c = server.client().await;
    c.batch_execute(
        "SET TimeZone = 'UTC';
         CREATE TABLE soak (point_id VARCHAR, ts TIMESTAMPTZ, value DOUBLE PRECISION,
                            WATERMARK FOR ts AS ts - INTERVAL '5' SECOND);
         CREATE MATERIALIZED VIEW soak_eowc AS
           SELECT point_id, window_start, avg(value) AS a, max(value) AS hi, count(*) AS n
           FROM TUMBLE(soak, ts, INTERVAL '1' MINUTE) GROUP BY point_id, window_start
           EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW soak_live AS
           SELECT window_start, min(value) AS lo, count(*) AS n
           FROM TUMBLE(soak, ts, INTERVAL '1' MINUTE) GROUP BY window_start;
         CREATE MATERIALIZED VIEW soak_recent AS
           SELECT point_id, ts, value FROM soak WHERE ts > now() - INTERVAL '2' MINUTE;",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut samples = Vec::new();
    for w in 0..windows {
        // One window's events, in time order, in one statement.
        c.batch_execute(&format!(
            "INSERT INTO soak SELECT 'p' || (i % 200), to_timestamp({} + i * 0.03), i % 97 FROM generate_series(0, {}) AS g(i)",
            1_704_067_200 + w * 60,
            PER_WINDOW - 1
        ))
        .await
        .unwrap();
        // The wall clock follows the stream: the temporal filter keeps two minutes.
        c.batch_execute(&format!(
            "SET strom_test_clock = '{}'",
            civil_time(1_704_067_200 + (w + 1) * 60)
        ))
        .await
        .unwrap();
        if w % 5 == 4 {
            samples.push((w + 1, state_keys(&c).await));
        }
    }
    let elapsed = started.elapsed();
    let recent: u64 = one(&c, "SELECT count(*) FROM soak_recent")
        .await
        .parse()
        .unwrap();
    // The clock is at the end of the last window: the last two windows are recent, but
    // for their first row, exactly two minutes old (`>` is strict).
    assert_eq!(recent, 2 * PER_WINDOW - 1);
    let n: i64 = one(&c, "SELECT count(*) FROM soak_eowc")
        .await
        .parse()
        .unwrap();
    // Every window but the last (still open) was emitted, 200 groups each.
    assert_eq!(n as u64, (windows - 1) * 200);
    eprintln!(
        "bounded state: {} events in {:.1?} ({:.0} events/s); state keys/bytes after every 5 windows: {samples:?}",
        windows * PER_WINDOW,
        elapsed,
        (windows * PER_WINDOW) as f64 / elapsed.as_secs_f64()
    );
    // Open windows only: the state after 10 windows is as large as it ever gets (2x
    // leaves room for a window in flight), however many windows follow.
    let reference = samples[1].1 .0.max(1);
    for (w, (keys, _)) in &samples {
        assert!(
            *keys <= 2 * reference,
            "state grew to {keys} keys after {w} windows (after 10: {reference})"
        );
    }
}

/// An interval join against a windowed aggregate that keeps updating (Nexmark q7's
/// shape) drops the readings the aggregate's watermark makes unmatchable. Its index of
/// rows by time lives in memory: after a kill -9 it is rebuilt from the stored rows
/// (spread over the join's workers), so rows from before the restart still match the
/// open window's new maximum, and are still dropped once unmatchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_join_drops_rows_stored_before_a_kill_9() {
    let mut server = TestServer::start();
    let mut c = server.client().await;
    c.batch_execute(
        "SET TimeZone = 'UTC';
         CREATE TABLE hr (point VARCHAR, ts TIMESTAMPTZ, v INT, WATERMARK FOR ts AS ts);
         CREATE MATERIALIZED VIEW hr_top AS
           SELECT r.point, r.v, r.ts FROM hr r
           JOIN (SELECT max(v) AS maxv, window_end AS ts FROM TUMBLE(hr, ts, INTERVAL '10' MINUTE) GROUP BY window_end) m
             ON r.v = m.maxv
           WHERE r.ts BETWEEN m.ts - INTERVAL '10' MINUTE AND m.ts;
         -- Window 00:00-00:10: values 1..100; window 00:20-00:30 (open): 101..200.
         INSERT INTO hr SELECT 'a' || i, to_timestamp(1704067200 + i), i
           FROM generate_series(1, 100) AS g(i);
         INSERT INTO hr SELECT 'b' || i, to_timestamp(1704068400 + i), 100 + i
           FROM generate_series(1, 100) AS g(i);
         FLUSH;",
    )
    .await
    .unwrap();
    let view_keys =
        "SELECT sum(state_keys) FROM strom_catalog.view_state WHERE view_name = 'hr_top'";
    // The 100 readings of the open window, and its maximum.
    assert_eq!(
        rows(&c, "SELECT point, v FROM hr_top").await,
        vec!["a100|100", "b100|200"]
    );
    drop(c);
    server.kill();
    server.spawn();
    c = server.client().await;
    // The open window's maximum rises: the new reading matches it, the old maximum's
    // row goes.
    c.batch_execute(
        "INSERT INTO hr VALUES ('x', '2024-01-01 00:29:00+00', 150), ('y', '2024-01-01 00:29:30+00', 250); FLUSH;",
    )
    .await
    .unwrap();
    assert_eq!(
        rows(&c, "SELECT point, v FROM hr_top").await,
        vec!["a100|100", "y|250"]
    );
    // A row equal to a reading stored before the kill becomes the maximum of a new
    // window: the stored one is out of that window's range and must not match.
    c.batch_execute("INSERT INTO hr VALUES ('z', '2024-01-01 00:31:00+00', 199); FLUSH;")
        .await
        .unwrap();
    assert_eq!(
        rows(&c, "SELECT point, v FROM hr_top").await,
        vec!["a100|100", "y|250", "z|199"]
    );
    // At 01:01 every earlier reading is unmatchable, and so are the maxima of the closed
    // windows. Left: the join's one reading and the open window's maximum, and the
    // aggregate's open window (its group; the index of open windows is in memory). The
    // 100 readings of the window open at the kill, kept, would make it 103.
    c.batch_execute("INSERT INTO hr VALUES ('g', '2024-01-01 01:01:00+00', 1); FLUSH;")
        .await
        .unwrap();
    assert_eq!(
        rows(&c, "SELECT point, v FROM hr_top").await,
        vec!["a100|100", "g|1", "y|250", "z|199"]
    );
    assert_eq!(one(&c, view_keys).await, "3");
}
