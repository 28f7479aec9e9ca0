//! Power-grid files dropped into a directory: E files (`ENCODE E_FILE`) and `||` files
//! (`ENCODE DELIMITED`), with file-name metadata, `after_read`, `error_dir`, bad rows
//! kept with their line numbers, strict mode, and exactly once across `kill -9`.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::server::{db_message, text_rows, TestServer};

const NAME_PATTERN: &str = "{company}_{subcompany}_{system}_{date:%Y%m%d}_{time:%H%M%S}.{suffix}";

fn sample(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/grid/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn wait_rows(c: &tokio_postgres::Client, sql: &str, want: &[&[&str]], secs: u64) {
    let want: Vec<Vec<Option<String>>> = want
        .iter()
        .map(|r| r.iter().map(|s| Some(s.to_string())).collect())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = text_rows(c, sql).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}:\n got {got:?}\nwant {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

async fn wait_listing(dir: &Path, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = listing(dir);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {got:?}, want {want:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A YC (telemetry) E file of rows `from..from + n`: value = i / 10, quality = i % 3.
fn yc_file(from: i64, n: i64) -> String {
    let mut s = String::from(
        "<!System=OMS\tVersion=1.0\tCode=UTF-8!>\n<YC::江苏.苏州\tDate='2025-03-13'\tTime='17-05-00'>\n@\t序号\t测点ID\t测点名称\t时间\t值\t质量码\n",
    );
    for i in from..from + n {
        s.push_str(&format!(
            "#\t{i}\t1168122343{i:08}\t江苏.梅村变/220kV.线{i}/有功值\t2025-03-13 17:05:00\t{}.{}\t{}\n",
            i / 10,
            i % 10,
            i % 3
        ));
    }
    s.push_str("</YC::江苏.苏州>\n");
    s
}

fn yc_source(root: &Path, done: &Path, errors: &Path, extra: &str) -> String {
    format!(
        "CREATE SOURCE scada_yc (
           seq INT, point_id VARCHAR, point_name VARCHAR, ts TIMESTAMP, value DOUBLE PRECISION, quality INT,
           WATERMARK FOR ts AS ts - INTERVAL '1' MINUTE
         ) INCLUDE file_name AS _file_name INCLUDE company AS _company INCLUDE system AS _system
           INCLUDE snapshot_time AS _snapshot_ts INCLUDE line AS _line_no INCLUDE class AS _class
           INCLUDE ingest_time AS _ingest_ts INCLUDE ingest_latency AS _latency
           INCLUDE limit_max 'value' AS _value_hi
         WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.DT',
               name_pattern = '{NAME_PATTERN}', after_read = 'move:{}', error_dir = '{}',
               timezone = 'Asia/Shanghai', posix_fs.poll.interval = '100ms'{extra})
         FORMAT PLAIN ENCODE E_FILE (block = 'YC', null_tokens = '-,NULL', separator = 'auto');",
        root.display(),
        done.display(),
        errors.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_files_dropped_into_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, done, errs) = (
        tmp.path().join("in"),
        tmp.path().join("done"),
        tmp.path().join("error"),
    );
    std::fs::create_dir(&root).unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&yc_source(&root, &done, &errs, ""))
        .await
        .unwrap();
    c.batch_execute(
        "CREATE MATERIALIZED VIEW yc AS
           SELECT _file_name, _line_no, point_id, coalesce(value, -1) AS value, quality, _company,
                  _system, _class,
                  CAST(extract(epoch FROM _snapshot_ts) AS BIGINT) = 1741856700 AS snap_ok,
                  _latency > INTERVAL '60' SECOND AS latency_ok
           FROM scada_yc;
         CREATE MATERIALIZED VIEW per_file AS
           SELECT _file_name, count(*) AS n, sum(seq) AS s, min(_ingest_ts) AS t
           FROM scada_yc GROUP BY _file_name;",
    )
    .await
    .unwrap();
    // Sample A, exactly as the domain notes have it.
    std::fs::write(
        root.join("SG_JS_SCADA_20250313_170500.DT"),
        sample("ours/SG_JS_SCADA_20250313_170500.DT"),
    )
    .unwrap();
    wait_rows(
        &c,
        "SELECT _line_no, point_id, value, quality, _company, _system, _class, snap_ok, latency_ok FROM yc ORDER BY _line_no",
        &[
            &["5", "116812234311389340", "132.56", "0", "SG", "SCADA", "YC", "t", "t"],
            &["6", "116812234311389341", "-18.2", "0", "SG", "SCADA", "YC", "t", "t"],
            &["7", "116812234311389342", "229.87", "0", "SG", "SCADA", "YC", "t", "t"],
            &["8", "116812234311389343", "-1", "128", "SG", "SCADA", "YC", "t", "t"],
            &["9", "116812234311389344", "47.3", "64", "SG", "SCADA", "YC", "t", "t"],
        ],
        20,
    )
    .await;
    let rows = text_rows(&c, "SELECT count(*), sum(quality) FROM yc WHERE value = -1").await;
    assert_eq!(rows, vec![vec![Some("1".into()), Some("128".into())]]);
    // Moved to `done` once committed; the ledger forgets it.
    wait_listing(&done, &["SG_JS_SCADA_20250313_170500.DT"]).await;
    assert_eq!(listing(&root), Vec::<String>::new());

    // A file with bad rows: the good rows are read, each bad one is kept with its line.
    let mut bad = yc_file(1, 3);
    bad = bad.replace("\t0.1\t1\n", "\tabc\t1\n"); // row 1: value not a number
    bad = bad.replace("\t2\t11681223430000000", "\t2\t11681223430000000\textra"); // row 2: 8 fields
    std::fs::write(root.join("SG_JS_SCADA_20250313_170600.DT"), &bad).unwrap();
    // A file whose name does not follow the pattern: quarantined with a reason.
    std::fs::write(root.join("badname.DT"), yc_file(100, 2)).unwrap();
    // A file nothing of which is an E file: fails, to the error directory.
    std::fs::write(
        root.join("SG_JS_SCADA_20250313_170700.DT"),
        b"\x00\x01garbage\nmore garbage\n",
    )
    .unwrap();
    wait_listing(
        &errs,
        &[
            "SG_JS_SCADA_20250313_170700.DT",
            "SG_JS_SCADA_20250313_170700.DT.err",
            "badname.DT",
            "badname.DT.err",
        ],
    )
    .await;
    wait_rows(
        &c,
        "SELECT n, s FROM per_file WHERE _file_name = 'SG_JS_SCADA_20250313_170600.DT'",
        &[&["1", "3"]],
        20,
    )
    .await;
    let errors = text_rows(
        &c,
        "SELECT topic, \"offset\", reason FROM strom_catalog.source_errors
         WHERE source_name = 'scada_yc' ORDER BY topic, \"offset\"",
    )
    .await;
    let find = |file: &str, line: i64| {
        errors
            .iter()
            .find(|r| r[0].as_deref() == Some(file) && r[1].as_deref() == Some(&line.to_string()))
            .and_then(|r| r[2].clone())
            .unwrap_or_else(|| panic!("no rejection for {file} line {line}: {errors:?}"))
    };
    let r = find("SG_JS_SCADA_20250313_170600.DT", 4);
    assert!(
        r.contains("line 4") && r.contains("column \"value\": 'abc'"),
        "{r}"
    );
    let r = find("SG_JS_SCADA_20250313_170600.DT", 5);
    assert!(r.contains("7 fields, but the header has 6"), "{r}");
    let r = find("badname.DT", 0);
    assert!(r.contains("does not match name_pattern"), "{r}");
    find("SG_JS_SCADA_20250313_170700.DT", 1);
    let why = std::fs::read_to_string(errs.join("SG_JS_SCADA_20250313_170700.DT.err")).unwrap();
    assert!(why.contains("no row of the file could be read"), "{why}");
    // The file with bad rows still counts as read: moved to `done`.
    wait_listing(
        &done,
        &[
            "SG_JS_SCADA_20250313_170500.DT",
            "SG_JS_SCADA_20250313_170600.DT",
        ],
    )
    .await;

    // Written slowly in pieces, and renamed into place: each read once, whole.
    let slow = root.join("SG_JS_SCADA_20250313_171000.DT");
    let mut f = std::fs::File::create(&slow).unwrap();
    let text = yc_file(1000, 40);
    for piece in text.as_bytes().chunks(211) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    drop(f);
    std::fs::write(
        root.join("SG_JS_SCADA_20250313_170900.DT.part"),
        yc_file(2000, 10),
    )
    .unwrap();
    std::fs::rename(
        root.join("SG_JS_SCADA_20250313_170900.DT.part"),
        root.join("SG_JS_SCADA_20250313_170900.DT"),
    )
    .unwrap();
    let sum_slow: i64 = (1000..1040).sum();
    let sum_renamed: i64 = (2000..2010).sum();
    wait_rows(
        &c,
        "SELECT _file_name, n, s FROM per_file WHERE _file_name LIKE '%1710%' OR _file_name LIKE '%1709%' ORDER BY 1",
        &[
            &["SG_JS_SCADA_20250313_170900.DT", "10", &sum_renamed.to_string()],
            &["SG_JS_SCADA_20250313_171000.DT", "40", &sum_slow.to_string()],
        ],
        20,
    )
    .await;
    // Read in snapshot-time order, whatever the names: two files dropped together, the
    // later-named one holding the earlier snapshot is read first.
    std::fs::write(
        root.join("ZZ_JS_SCADA_20250313_160000.DT"),
        yc_file(3000, 2),
    )
    .unwrap();
    std::fs::write(
        root.join("AA_JS_SCADA_20250313_180000.DT"),
        yc_file(4000, 2),
    )
    .unwrap();
    wait_rows(
        &c,
        "SELECT count(*) FROM per_file WHERE _file_name IN ('ZZ_JS_SCADA_20250313_160000.DT', 'AA_JS_SCADA_20250313_180000.DT')",
        &[&["2"]],
        20,
    )
    .await;
    wait_rows(
        &c,
        "SELECT _file_name FROM per_file WHERE _file_name IN ('ZZ_JS_SCADA_20250313_160000.DT', 'AA_JS_SCADA_20250313_180000.DT') ORDER BY t",
        &[&["ZZ_JS_SCADA_20250313_160000.DT"], &["AA_JS_SCADA_20250313_180000.DT"]],
        1,
    )
    .await;
    // Nothing was read twice; the latency metric is there.
    tokio::time::sleep(Duration::from_millis(400)).await;
    wait_rows(&c, "SELECT count(*) FROM yc", &[&["60"]], 1).await;
    let lat = text_rows(
        &c,
        "SELECT ingest_latency_ms > 0 FROM strom_catalog.source_status WHERE name = 'scada_yc'",
    )
    .await;
    assert_eq!(lat, vec![vec![Some("t".into())]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_bar_files_strict_mode_and_declaration_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, errs) = (tmp.path().join("in"), tmp.path().join("error"));
    std::fs::create_dir(&root).unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE tmr_plain (point_id VARCHAR, point_name VARCHAR, ts TIMESTAMP, value DOUBLE PRECISION, quality INT)
           INCLUDE file_name AS _file INCLUDE line AS _line
         WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.TXT',
               posix_fs.poll.interval = '100ms', strict = 'true', error_dir = '{}')
         FORMAT PLAIN ENCODE DELIMITED (delimiter = '||', header = 'auto');
         CREATE MATERIALIZED VIEW tv AS SELECT _file, _line, point_id, value, quality FROM tmr_plain;",
        root.display(),
        errs.display()
    ))
    .await
    .unwrap();
    std::fs::write(
        root.join("SG_JS_SCADA_20250313_170507.TXT"),
        sample("ours/SG_JS_SCADA_20250313_170507.TXT"),
    )
    .unwrap();
    // Strict: one bad row, and none of the file is read.
    std::fs::write(
        root.join("b.TXT"),
        "1||a||2025-03-13 17:05:00||1.5||0\n2||b||2025-03-13 17:05:00||1.5\n",
    )
    .unwrap();
    wait_listing(&errs, &["b.TXT", "b.TXT.err"]).await;
    wait_rows(
        &c,
        "SELECT _file, _line, point_id, coalesce(value, -1), quality FROM tv ORDER BY _line",
        &[
            &[
                "SG_JS_SCADA_20250313_170507.TXT",
                "2",
                "116812234311389340",
                "132.56",
                "0",
            ],
            &[
                "SG_JS_SCADA_20250313_170507.TXT",
                "3",
                "116812234311389343",
                "-1",
                "128",
            ],
        ],
        20,
    )
    .await;
    let why = std::fs::read_to_string(errs.join("b.TXT.err")).unwrap();
    assert!(
        why.contains("strict") && why.contains("line 2: 4 fields, but 5 were expected"),
        "{why}"
    );
    // Declarations that cannot work name what is wrong.
    let r = root.display();
    for (sql, msg) in [
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}') FORMAT PLAIN ENCODE DELIMITED"), "needs a delimiter"),
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}') FORMAT PLAIN ENCODE E_FILE (separator = 'comma')"), "auto, tab or whitespace"),
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}') FORMAT PLAIN ENCODE E_FILE (encoding = 'latin9')"), "not an encoding"),
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}', name_pattern = '{{date}}') FORMAT PLAIN ENCODE E_FILE"), "needs a format"),
        (format!("CREATE SOURCE x (a INT) INCLUDE company AS c WITH (connector = 'posix_fs', posix_fs.root = '{r}') FORMAT PLAIN ENCODE E_FILE"), "needs a name_pattern"),
        (format!("CREATE SOURCE x (a INT) INCLUDE class AS c WITH (connector = 'posix_fs', posix_fs.root = '{r}') FORMAT PLAIN ENCODE CSV"), "not available with ENCODE CSV"),
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}', after_read = 'move:{r}') FORMAT PLAIN ENCODE E_FILE"), "posix_fs.root itself"),
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}', after_read = 'archive') FORMAT PLAIN ENCODE E_FILE"), "keep, delete or move"),
        (format!("CREATE SOURCE x (a INT) WITH (connector = 'posix_fs', posix_fs.root = '{r}', timezone = 'Mars/Base') FORMAT PLAIN ENCODE E_FILE"), "timezone"),
        (format!("CREATE SOURCE x (a INT) INCLUDE unit AS u WITH (connector = 'posix_fs', posix_fs.root = '{r}') FORMAT PLAIN ENCODE E_FILE"), "INCLUDE unit needs the column name"),
        ("CREATE SOURCE x (a INT) INCLUDE company AS c WITH (connector = 'kafka', topic = 't', properties.bootstrap.server = 'x') FORMAT PLAIN ENCODE JSON".to_string(), "connector kafka cannot INCLUDE company"),
    ] {
        let err = c.batch_execute(&sql).await.unwrap_err();
        let m = db_message(&err);
        assert!(m.contains(msg), "{sql}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_e_file_resumes_exactly_after_kill_9() {
    const N: i64 = 60_000;
    let tmp = tempfile::tempdir().unwrap();
    let (root, done, errs) = (
        tmp.path().join("in"),
        tmp.path().join("done"),
        tmp.path().join("error"),
    );
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("SG_JS_SCADA_20250313_170500.DT"), yc_file(1, N)).unwrap();
    let mut server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&yc_source(
        &root,
        &done,
        &errs,
        ", source_rate_limit = '20000'",
    ))
    .await
    .unwrap();
    c.batch_execute(
        "CREATE MATERIALIZED VIEW tot AS SELECT count(*) AS n, sum(seq) AS s, count(DISTINCT seq) AS d FROM scada_yc",
    )
    .await
    .unwrap();
    crate::files::wait_mid_file(&c, "SELECT coalesce(n, 0) FROM tot", N).await;
    drop(c);
    server.kill();
    server.spawn();
    let c = server.client().await;
    let s = N * (N + 1) / 2;
    wait_rows(
        &c,
        "SELECT n, s, d FROM tot",
        &[&[&N.to_string(), &s.to_string(), &N.to_string()]],
        60,
    )
    .await;
    // Moved once done, and its ledger entry forgotten.
    wait_listing(&done, &["SG_JS_SCADA_20250313_170500.DT"]).await;
    wait_rows(
        &c,
        "SELECT count(*) FROM strom_catalog.source_offsets WHERE source_name = 'scada_yc'",
        &[&["0"]],
        10,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_in_is_read_without_waiting_for_a_poll() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    std::fs::create_dir(&root).unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    // Polls are 30 s apart: only the inotify event can bring the file in time.
    c.batch_execute(&format!(
        "CREATE SOURCE s (a BIGINT, b VARCHAR) WITH (connector = 'posix_fs', posix_fs.root = '{}',
           match_pattern = '*.TXT', posix_fs.poll.interval = '30s')
         FORMAT PLAIN ENCODE DELIMITED (delimiter = '||', header = 'false');
         CREATE MATERIALIZED VIEW sv AS SELECT count(*) AS n, sum(a) AS s FROM s;",
        root.display()
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the first listing is done
    std::fs::write(root.join("x.TXT.part"), "1||a\n2||b\n3||\n").unwrap();
    std::fs::rename(root.join("x.TXT.part"), root.join("x.TXT")).unwrap();
    wait_rows(&c, "SELECT n, s FROM sv", &[&["3", "6"]], 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_from_the_block_and_names_ingested_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    std::fs::create_dir(&root).unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    // Event time from the block's Date=/Time=; names that do not match are read anyway.
    c.batch_execute(&format!(
        "CREATE SOURCE cq (seq INT, power DOUBLE PRECISION,
                           WATERMARK FOR bt AS bt - INTERVAL '1' MINUTE)
           INCLUDE block_time AS bt INCLUDE name_ok AS ok INCLUDE entity AS station
           INCLUDE block_attr 'Time' AS t_attr
         WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.DT',
               name_pattern = '{NAME_PATTERN}', on_bad_name = 'ingest', timezone = '+08:00',
               posix_fs.poll.interval = '100ms')
         FORMAT PLAIN ENCODE E_FILE (block = 'CDQYC');
         CREATE MATERIALIZED VIEW w AS
           SELECT window_start, count(*) AS n, sum(power) AS p, bool_and(ok) AS all_ok,
                  min(station) AS station, min(t_attr) AS t
           FROM TUMBLE(cq, bt, INTERVAL '15' MINUTE) GROUP BY window_start;",
        root.display()
    ))
    .await
    .unwrap();
    let file = |time: &str, p: &str| {
        format!(
            "//超短期功率预测信息监测\n<!System=OMS\tVersion=1.0\tCode=UTF-8\tData=1.0!>\n<CDQYC::GD.GDZJYS\tDate='2022-07-21'\tTime='{time}'>\n@\t序号\t功率\n#\t1\t{p}\n#\t2\t{p}\n</CDQYC::GD.GDZJYS>\n"
        )
    };
    std::fs::write(
        root.join("GD_ZJ_OMS_20220721_031500.DT"),
        file("03-15-00", "1.5"),
    )
    .unwrap();
    // A name without a snapshot time sorts first, so this file is read first: its block
    // time is the earlier one, or the other file's rows would be behind the watermark.
    std::fs::write(root.join("forecast.DT"), file("03-01-00", "2")).unwrap();
    wait_rows(
        &c,
        "SELECT CAST(extract(epoch FROM window_start) AS BIGINT), n, p, all_ok, station, t FROM w ORDER BY 1",
        &[
            // 03:01 and 03:15 at +08:00 are 19:01 and 19:15 UTC the day before.
            &["1658343600", "2", "4", "f", "GD.GDZJYS", "03-01-00"],
            &["1658344500", "2", "3", "t", "GD.GDZJYS", "03-15-00"],
        ],
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_units_and_limits_are_columns_views_can_check() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    std::fs::create_dir(&root).unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    // Sample C (meter readings) with its `$` unit and `:` limit lines.
    c.batch_execute(&format!(
        "CREATE SOURCE tmr (seq INT, mp_id VARCHAR, ts TIMESTAMP, reading DOUBLE PRECISION,
                            energy DOUBLE PRECISION, multiplier DOUBLE PRECISION,
                            t1 DOUBLE PRECISION, t2 DOUBLE PRECISION, t3 DOUBLE PRECISION,
                            t4 DOUBLE PRECISION, status INT)
           INCLUDE unit 'energy' AS unit INCLUDE limit_max 'energy' AS hi
           INCLUDE limit_min '倍率' AS mult_lo INCLUDE class AS class
         WITH (connector = 'posix_fs', posix_fs.root = '{}', posix_fs.poll.interval = '100ms')
         FORMAT PLAIN ENCODE E_FILE (block = 'DNL');
         CREATE MATERIALIZED VIEW checked AS
           SELECT seq, mp_id, energy, unit, hi, mult_lo, class,
                  energy < 0 OR energy > hi AS out_of_range,
                  EXTRACT(MINUTE FROM ts) % 15 <> 0 AS off_grid
           FROM tmr;",
        root.display()
    ))
    .await
    .unwrap();
    std::fs::write(
        root.join("SG_03_TMR_20250313_171500.DT"),
        sample("ours/SG_03_TMR_20250313_171500.DT"),
    )
    .unwrap();
    wait_rows(
        &c,
        "SELECT seq, mp_id, coalesce(energy, -1), unit, hi, mult_lo, class,
                coalesce(out_of_range, false), off_grid FROM checked ORDER BY seq",
        &[
            &[
                "1",
                "3401000123",
                "264",
                "kWh",
                "100000",
                "1",
                "DNL",
                "f",
                "f",
            ],
            &[
                "2",
                "3401000124",
                "-1",
                "kWh",
                "100000",
                "1",
                "DNL",
                "f",
                "f",
            ],
            &[
                "3",
                "3401000125",
                "-240",
                "kWh",
                "100000",
                "1",
                "DNL",
                "t",
                "t",
            ],
        ],
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_read_skip_bad_names_and_a_new_file_under_an_old_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    std::fs::create_dir(&root).unwrap();
    let server = TestServer::start();
    let c = server.client().await;
    c.batch_execute(&format!(
        "CREATE SOURCE d (a BIGINT, b VARCHAR) INCLUDE system AS sys
         WITH (connector = 'posix_fs', posix_fs.root = '{}', match_pattern = '*.TXT',
               name_pattern = '{NAME_PATTERN}', on_bad_name = 'skip', after_read = 'delete',
               posix_fs.poll.interval = '100ms')
         FORMAT PLAIN ENCODE DELIMITED (delimiter = '||', header = 'false');
         CREATE MATERIALIZED VIEW dv AS SELECT count(*) AS n, sum(a) AS s, min(sys) AS sys FROM d;",
        root.display()
    ))
    .await
    .unwrap();
    let name = "SG_JS_SCADA_20250313_170500.TXT";
    std::fs::write(root.join(name), "1||a\n2||b\n").unwrap();
    std::fs::write(root.join("bad.TXT"), "100||x\n").unwrap();
    wait_rows(&c, "SELECT n, s, sys FROM dv", &[&["2", "3", "SCADA"]], 20).await;
    // Deleted once read; the bad name is left alone, unread and not rejected.
    wait_listing(&root, &["bad.TXT"]).await;
    // A new file under the old name is a new file.
    std::fs::write(root.join(name), "10||c\n20||d\n30||e\n").unwrap();
    wait_rows(&c, "SELECT n, s FROM dv", &[&["5", "63"]], 20).await;
    wait_listing(&root, &["bad.TXT"]).await;
    let errors = text_rows(
        &c,
        "SELECT count(*) FROM strom_catalog.source_errors WHERE source_name = 'd'",
    )
    .await;
    assert_eq!(errors, vec![vec![Some("0".into())]]);
}
