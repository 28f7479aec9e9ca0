//! `connector = 'posix_fs'` sources against a real directory: files complete, in writing,
//! renamed into place, corrupt; exactly once per file across `kill -9` mid-file.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::server::{db_message, text_rows, TestServer};

/// `n` rows `i,i*2,2024-01-01 00:00:00 + i s` from `from`.
fn rows(from: i64, n: i64) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{i},{},2024-01-01 {:02}:{:02}:{:02}\n",
                i * 2,
                (i / 3600) % 24,
                (i / 60) % 60,
                i % 60
            )
        })
        .collect()
}

async fn wait_for(c: &tokio_postgres::Client, sql: &str, want: &[&str], secs: u64) {
    let want: Vec<Vec<Option<String>>> = vec![want.iter().map(|s| Some(s.to_string())).collect()];
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = text_rows(c, sql).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `count_sql` shows some rows but fewer than `total` (the moment to kill a
/// server mid-file).
pub async fn wait_mid_file(c: &tokio_postgres::Client, count_sql: &str, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = c.query_one(count_sql, &[]).await.unwrap().get(0);
        if n > 0 {
            assert!(n < total, "finished before the kill; slow the source down");
            return;
        }
        assert!(Instant::now() < deadline, "no rows arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the single count `sql` returns reaches `want`.
async fn wait_count(c: &tokio_postgres::Client, sql: &str, want: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) < want {
        assert!(Instant::now() < deadline, "{what}: fewer than {want} rows");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create(dir: &Path, poll: &str, extra: &str) -> String {
    format!(
        "CREATE SOURCE f (a BIGINT, b BIGINT, ts TIMESTAMP)
           WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.csv',
                 posix_fs.poll.interval = '{poll}'{extra})
           FORMAT PLAIN ENCODE CSV (without_header = 'true');
         CREATE MATERIALIZED VIEW fv AS SELECT count(*) AS n, sum(a) AS s, sum(b) AS s2 FROM f;",
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_read_once_when_complete() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    std::fs::write(dir.path().join("a.csv"), rows(1, 100)).unwrap();
    // Not matching the pattern, or still being written: never read.
    std::fs::write(dir.path().join("b.txt"), rows(1000, 10)).unwrap();
    std::fs::write(dir.path().join("c.csv.part"), rows(1000, 10)).unwrap();
    std::fs::write(dir.path().join(".d.csv"), rows(1000, 10)).unwrap();
    c.batch_execute(&create(dir.path(), "200ms", ""))
        .await
        .unwrap();
    wait_for(&c, "SELECT n, s FROM fv", &["100", "5050"], 20).await;
    // Renamed into place: read.
    std::fs::rename(dir.path().join("c.csv.part"), dir.path().join("c.csv")).unwrap();
    wait_for(&c, "SELECT n, s FROM fv", &["110", "15095"], 20).await;
    // Written slowly in pieces, the last line without a newline: read once complete,
    // as one file (not a prefix and then the rest).
    let slow = dir.path().join("e.csv");
    let mut f = std::fs::File::create(&slow).unwrap();
    let text = rows(2000, 50);
    let text = text.trim_end();
    for piece in text.as_bytes().chunks(97) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(f);
    let want_s = 15095 + (2000..2050).sum::<i64>();
    wait_for(&c, "SELECT n, s FROM fv", &["160", &want_s.to_string()], 20).await;
    // A corrupt file: its only batch fails to decode, so none of it is ingested (rows are
    // not yet rejected one by one); the failure names the file, and the files after it
    // are still read.
    std::fs::write(
        dir.path().join("f.csv"),
        format!("{}x,1,2024-01-01 00:00:00\n", rows(3000, 2)),
    )
    .unwrap();
    std::fs::write(dir.path().join("g.csv"), rows(4000, 1)).unwrap();
    let want_s = want_s + 4000;
    wait_for(&c, "SELECT n, s FROM fv", &["161", &want_s.to_string()], 20).await;
    let errors = text_rows(
        &c,
        "SELECT topic, reason FROM strom_catalog.source_errors WHERE source_name = 'f'",
    )
    .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0][0].as_deref(), Some("f.csv"));
    assert!(
        errors[0][1].as_deref().unwrap().contains("file \"f.csv\""),
        "{errors:?}"
    );
    // Nothing is read twice, however long we wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_for(
        &c,
        "SELECT n, s, s2 FROM fv",
        &["161", &want_s.to_string(), &(want_s * 2).to_string()],
        1,
    )
    .await;
    // Bad declarations name what is wrong.
    for (sql, msg) in [
        ("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs') FORMAT PLAIN ENCODE CSV", "posix_fs.root"),
        ("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '/tmp')", "FORMAT PLAIN"),
        ("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '/tmp', nope = '1') FORMAT PLAIN ENCODE CSV", "unknown option \"nope\""),
        ("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '/tmp') FORMAT PLAIN ENCODE CSV (delimiter = '||')", "one ASCII character"),
        ("CREATE SOURCE x (a INTERVAL) WITH (connector = 'posix_fs', posix_fs.root = '/tmp') FORMAT PLAIN ENCODE CSV", "cannot read type"),
    ] {
        let err = c.batch_execute(sql).await.unwrap_err();
        let m = db_message(&err);
        assert!(m.contains(msg), "{sql}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_resumes_exactly_after_kill_9_mid_file() {
    const N: i64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.csv"), rows(1, N)).unwrap();
    let mut server = TestServer::start();
    let c = server.client().await;
    // 20,000 rows/s in batches of 2,000: the kill lands mid-file.
    c.batch_execute(&create(dir.path(), "50ms", ", source_rate_limit = '20000'"))
        .await
        .unwrap();
    wait_mid_file(&c, "SELECT coalesce(n, 0) FROM fv", N).await;
    drop(c);
    server.kill();
    server.spawn();
    let c = server.client().await;
    let s = N * (N + 1) / 2;
    wait_for(
        &c,
        "SELECT n, s, s2 FROM fv",
        &[&N.to_string(), &s.to_string(), &(2 * s).to_string()],
        60,
    )
    .await;
    // The file is marked done (its last, empty, read commits after the rows).
    wait_for(
        &c,
        "SELECT next_offset FROM strom_catalog.source_offsets WHERE source_name = 'f' AND partition = 0",
        &[&i64::MAX.to_string()],
        10,
    )
    .await;
}

/// `log_by_reference = 'true'`: CSV rows go into the change log as (file, byte range,
/// checksum). With barriers 10 minutes apart, no entry is consumed when the server is
/// killed; after the restart the rows are read again from the files (a header, a last
/// line without a newline), exactly once. A file changed before that is reported: its
/// views fail, saying why, instead of reading other rows. With `after_read = 'delete'`
/// a file stays until the views have consumed its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_logged_by_reference_are_read_again_after_kill_9() {
    const N: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept");
    let deleted = dir.path().join("deleted");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::create_dir_all(&deleted).unwrap();
    let mut server = TestServer::start_with(&["--barrier-interval-ms", "600000"]);
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE f (a BIGINT, b BIGINT, ts TIMESTAMP)
           INCLUDE file_name AS file
           WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.csv',
                 posix_fs.poll.interval = '50ms', log_by_reference = 'true')
           FORMAT PLAIN ENCODE CSV;
         CREATE MATERIALIZED VIEW fv AS SELECT file, count(*) AS n, sum(a) AS s, sum(b) AS s2 FROM f GROUP BY file;
         CREATE SOURCE g (a BIGINT, b BIGINT, ts TIMESTAMP)
           WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.csv',
                 posix_fs.poll.interval = '50ms', log_by_reference = 'true', after_read = 'delete')
           FORMAT PLAIN ENCODE CSV (without_header = 'true');
         CREATE MATERIALIZED VIEW gv AS SELECT count(*) AS n, sum(a) AS s FROM g;",
        kept.display(),
        deleted.display()
    ))
    .await
    .unwrap();
    // Written after the views exist (creating a view runs epochs): three 8,192-row
    // batches, the first after a header line; the file ends mid-line.
    let text = format!("a,b,ts\n{}", rows(1, N));
    std::fs::write(kept.join("big.csv"), text.trim_end()).unwrap();
    std::fs::write(deleted.join("d.csv"), rows(1, 100)).unwrap();
    let read = "SELECT coalesce(sum(rows), 0)::bigint FROM strom_catalog.source_status WHERE name IN ('f', 'g')";
    wait_count(&c, read, N + 100, "the files were not read").await;
    // Read, not consumed: the file to delete stays, and no row reached a view.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        deleted.join("d.csv").exists(),
        "deleted before the views had its rows"
    );
    assert_eq!(
        text_rows(&c, "SELECT (SELECT count(*) FROM fv), (SELECT n FROM gv)").await,
        vec![vec![Some("0".into()), Some("0".into())]]
    );
    drop(c);
    server.kill();
    server.spawn();
    let c = server.client().await;
    c.batch_execute("FLUSH").await.unwrap();
    let s = N * (N + 1) / 2;
    assert_eq!(
        text_rows(&c, "SELECT file, n, s, s2 FROM fv").await,
        vec![vec![
            Some("big.csv".into()),
            Some(N.to_string()),
            Some(s.to_string()),
            Some((2 * s).to_string())
        ]]
    );
    assert_eq!(
        text_rows(&c, "SELECT n, s FROM gv").await,
        vec![vec![Some("100".into()), Some("5050".into())]]
    );
    // Consumed: now the file goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while deleted.join("d.csv").exists() {
        assert!(
            Instant::now() < deadline,
            "the consumed file was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file put in place under the same name while the reader waits to delete the one
    // it read is another file: read, not deleted unread.
    let g_rows =
        "SELECT coalesce(sum(rows), 0)::bigint FROM strom_catalog.source_status WHERE name = 'g'";
    let g0: i64 = c.query_one(g_rows, &[]).await.unwrap().get(0);
    std::fs::write(deleted.join("d.csv"), rows(500, 10)).unwrap();
    wait_count(&c, g_rows, g0 + 10, "d.csv was not read").await;
    std::fs::write(deleted.join("d.part"), rows(900, 3)).unwrap();
    std::fs::rename(deleted.join("d.part"), deleted.join("d.csv")).unwrap();
    c.batch_execute("FLUSH").await.unwrap();
    wait_count(&c, g_rows, g0 + 13, "the replacing d.csv was not read").await;
    c.batch_execute("FLUSH").await.unwrap();
    let want_s = 5050 + (500..510).sum::<i64>() + (900..903).sum::<i64>();
    assert_eq!(
        text_rows(&c, "SELECT n, s FROM gv").await,
        vec![vec![Some("113".into()), Some(want_s.to_string())]]
    );
    // A file rewritten between the read and a restart: its rows cannot be read again.
    // (The status counts rows read since the start.)
    let before: i64 = c.query_one(read, &[]).await.unwrap().get(0);
    std::fs::write(kept.join("late.csv"), format!("a,b,ts\n{}", rows(1, 10))).unwrap();
    wait_count(&c, read, before + 10, "late.csv was not read").await;
    drop(c);
    server.kill();
    std::fs::write(kept.join("late.csv"), format!("a,b,ts\n{}", rows(7, 10))).unwrap();
    server.spawn();
    let c = server.client().await;
    c.batch_execute("FLUSH").await.unwrap();
    let err = c.query("SELECT * FROM fv", &[]).await.unwrap_err();
    let msg = db_message(&err);
    assert!(
        msg.contains("late.csv") && msg.contains("changed since they were read"),
        "{msg}"
    );
    // Declared on a line-oriented format, the option is refused.
    let err = c
        .batch_execute(&format!(
            "CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{}', log_by_reference = 'true') FORMAT PLAIN ENCODE DELIMITED (delimiter = '||')",
            kept.display()
        ))
        .await
        .unwrap_err();
    let msg = db_message(&err);
    assert!(
        msg.contains("log_by_reference") && msg.contains("ENCODE CSV"),
        "{msg}"
    );
}

/// A source logging CSV rows by reference leaves out the text columns no view reads,
/// chosen per file. A view created while a file is read, reading such a column, gets the
/// rest of the file's batches made again whole from the file; a late row is set aside
/// whole. When the file is gone, only the view that reads a left-out column fails,
/// naming the source and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_columns_no_view_reads_are_made_again_for_a_view_that_reads_them() {
    const N: i64 = 8_000;
    let dir = tempfile::tempdir().unwrap();
    let lines = |from: i64, n: i64, day: &str| -> String {
        (from..from + n)
            .map(|i| {
                let (h, m, s) = (i / 3600, (i / 60) % 60, i % 60);
                format!("{i},t-{i},u-{i},{day} {h:02}:{m:02}:{s:02}\n")
            })
            .collect()
    };
    let server = TestServer::start();
    let c = server.client().await;
    // 2,000 rows/s: each file takes 4 s, and views are created mid-file.
    c.batch_execute(&format!(
        "CREATE SOURCE p (a BIGINT, t TEXT, u TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
           WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.csv',
                 posix_fs.poll.interval = '50ms', log_by_reference = 'true',
                 source_rate_limit = '2000')
           FORMAT PLAIN ENCODE CSV (without_header = 'true');
         CREATE MATERIALIZED VIEW pa AS SELECT count(*) AS n, sum(a) AS s FROM p;",
        dir.path().display()
    ))
    .await
    .unwrap();
    let n_pa = "SELECT coalesce((SELECT n FROM pa), 0)";
    let check =
        "SELECT (SELECT count(*) FROM pt) > 0, (SELECT count(*) FROM pt) < (SELECT n FROM pa), \
                 (SELECT count(*) FROM pt WHERE t = 't-' || a) = (SELECT count(*) FROM pt)";
    let all_true = vec![vec![Some("t".to_string()); 3]];
    // pt is created while f1.csv is read without `t`.
    std::fs::write(dir.path().join("f1.csv"), lines(1, N, "2024-01-02")).unwrap();
    wait_mid_file(&c, n_pa, N).await;
    c.batch_execute("CREATE MATERIALIZED VIEW pt AS SELECT a, t FROM p")
        .await
        .unwrap();
    wait_count(&c, n_pa, N, "f1.csv was not consumed").await;
    c.batch_execute("FLUSH").await.unwrap();
    assert_eq!(text_rows(&c, check).await, all_true);
    // Behind the watermark f1.csv set: set aside with `u`, which no view reads.
    std::fs::write(dir.path().join("f2.csv"), lines(5000, 1, "2024-01-01")).unwrap();
    let late = "SELECT count(*) FROM strom_catalog.late_rows WHERE relation_name = 'p'";
    wait_count(&c, late, 1, "the late row was not set aside").await;
    let row: String = c
        .query_one(
            "SELECT row FROM strom_catalog.late_rows WHERE relation_name = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(row.contains("t-5000") && row.contains("u-5000"), "{row}");
    // f3.csv is deleted while it is read (the reader keeps it open), then a view reading
    // `u` is created: the rest of the file cannot be made again for it.
    std::fs::write(dir.path().join("f3.csv"), lines(10_001, N, "2024-01-03")).unwrap();
    let f3_read = "SELECT coalesce((SELECT n FROM pa), 0) - 8000";
    wait_mid_file(&c, f3_read, N).await;
    std::fs::remove_file(dir.path().join("f3.csv")).unwrap();
    c.batch_execute("CREATE MATERIALIZED VIEW pu AS SELECT a, u FROM p")
        .await
        .unwrap();
    wait_count(&c, n_pa, 2 * N, "f3.csv was not consumed").await;
    c.batch_execute("FLUSH").await.unwrap();
    let err = c.query("SELECT * FROM pu", &[]).await.unwrap_err();
    let msg = db_message(&err);
    assert!(
        msg.contains("\"p\"") && msg.contains("f3.csv") && msg.contains("cannot be made again"),
        "{msg}"
    );
    // The views that do not read `u` have all of f3.csv.
    assert_eq!(text_rows(&c, check).await, all_true);
    assert_eq!(
        text_rows(&c, "SELECT n FROM pa").await,
        vec![vec![Some((2 * N).to_string())]]
    );
}

/// A text column no view reads but the source's watermark expression does is decoded:
/// the watermark is computed from its real values (here it decides how far the
/// watermark lags), so a row behind it is set aside as late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_columns_the_watermark_reads_are_not_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE w (a BIGINT, lag TEXT, ts TIMESTAMP,
           WATERMARK FOR ts AS CASE WHEN lag = 'none' THEN ts ELSE ts - INTERVAL '10' DAY END)
           WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.csv',
                 posix_fs.poll.interval = '50ms', log_by_reference = 'true')
           FORMAT PLAIN ENCODE CSV (without_header = 'true');
         CREATE MATERIALIZED VIEW wn AS SELECT count(*) AS n FROM w;",
        dir.path().display()
    ))
    .await
    .unwrap();
    let read =
        "SELECT coalesce(sum(rows), 0)::bigint FROM strom_catalog.source_status WHERE name = 'w'";
    std::fs::write(
        dir.path().join("a.csv"),
        "1,none,2024-01-02 10:00:00\n2,none,2024-01-02 10:00:01\n",
    )
    .unwrap();
    wait_count(&c, read, 2, "a.csv was not read").await;
    // Two hours behind a watermark at 10:00:01; were `lag` left NULL, it would lag ten
    // days and the row would be on time.
    std::fs::write(dir.path().join("b.csv"), "3,none,2024-01-02 08:00:00\n").unwrap();
    let late = "SELECT count(*) FROM strom_catalog.late_rows WHERE relation_name = 'w'";
    wait_count(
        &c,
        late,
        1,
        "the row behind the watermark was not set aside",
    )
    .await;
    c.batch_execute("FLUSH").await.unwrap();
    assert_eq!(
        text_rows(&c, "SELECT n FROM wn").await,
        vec![vec![Some("2".into())]]
    );
}
