//! Grid file ingest: `cargo bench --bench files` (after `. scripts/release-env.sh`).
//!
//! 1. **Parse rate**: the E-file and `||` decoders plus typed Arrow columns, in this
//!    process on one core, over a generated file held in memory (the same code a
//!    `posix_fs` source runs per line). MB/s and rows/s, best of three.
//! 2. **Ingest**: a release `strom` server reads the same data as files dropped into a
//!    directory (`connector = 'posix_fs'`) into a view `count(*), sum(value)`; the clock
//!    runs from `CREATE SOURCE` until the view holds every row. MB/s, rows/s, and the
//!    server's CPU seconds.
//!
//! `STROM_FILES_MB` sets the data size (default 256 MB, in 8 files for the ingest run);
//! `STROM_FILES_PARSE_ONLY=1` stops after the E-file parse (for profiling).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strom_catalog::{ColumnDef, ConnectorDef, SchemaId, SqlType, TableDef, TableId};

mod common;
use common::{connect, BenchServer};

/// About `bytes` of YC (telemetry) rows like the domain notes' sample A, numbered from
/// `first`, with `sep` between fields, after `head` and before `tail`; and the row count.
fn rows(
    first: u64,
    bytes: usize,
    head: &str,
    row_start: &str,
    sep: &str,
    tail: &str,
) -> (String, u64) {
    let mut s = String::with_capacity(bytes + 256);
    s.push_str(head);
    let mut i = first;
    while s.len() < bytes {
        let fields = [
            i.to_string(),
            format!("1168122343{:08}", i % 100_000_000),
            format!("江苏.梅村变/220kV.梅山{}线/有功值", i % 97),
            format!("2025-03-13 17:{:02}:{:02}", (i / 60) % 60, i % 60),
            format!("{}.{:02}", i % 1000, i % 100),
            if i.is_multiple_of(50) { "128" } else { "0" }.to_string(),
        ];
        s.push_str(row_start);
        s.push_str(&fields.join(sep));
        s.push('\n');
        i += 1;
    }
    s.push_str(tail);
    (s, i - first)
}

/// A YC E file (TAB-separated, one block).
fn e_file(first: u64, bytes: usize) -> (String, u64) {
    rows(
        first,
        bytes,
        "<!System=OMS\tVersion=1.0\tCode=UTF-8\tData=1.0!>\n<YC::江苏.苏州\tDate='2025-03-13'\tTime='17-05-00'>\n@\t序号\t测点ID\t测点名称\t时间\t值\t质量码\n",
        "#\t",
        "\t",
        "</YC::江苏.苏州>\n",
    )
}

/// The same rows as a `||` file with a header.
fn bar_file(first: u64, bytes: usize) -> (String, u64) {
    rows(
        first,
        bytes,
        "SEQ||POINT_ID||POINT_NAME||TS||VALUE||QUALITY\n",
        "",
        "||",
        "",
    )
}

const COLUMNS: &str = "seq BIGINT, point_id VARCHAR, point_name VARCHAR, ts TIMESTAMP, value DOUBLE PRECISION, quality INT";

fn def(encode: &str, encode_options: &[(&str, &str)]) -> TableDef {
    let cols = [
        ("seq", SqlType::BigInt),
        ("point_id", SqlType::Varchar(None)),
        ("point_name", SqlType::Varchar(None)),
        ("ts", SqlType::Timestamp),
        ("value", SqlType::Double),
        ("quality", SqlType::Int),
    ];
    let c = ConnectorDef {
        is_source: true,
        is_sink: false,
        options: BTreeMap::from([
            ("connector".to_string(), "posix_fs".to_string()),
            ("posix_fs.root".to_string(), "/nonexistent".to_string()),
        ]),
        format: "PLAIN".into(),
        encode: encode.into(),
        encode_options: encode_options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        includes: Vec::new(),
    };
    TableDef {
        id: TableId(1),
        schema: SchemaId(1),
        name: "bench".into(),
        columns: cols
            .iter()
            .map(|(n, t)| ColumnDef {
                name: n.to_string(),
                ty: t.clone(),
                nullable: true,
                default: None,
                hidden: false,
            })
            .collect(),
        pk: vec![],
        user_pk: false,
        view: None,
        connector: Some(c),
        watermark: None,
        indexes: Vec::new(),
        next_index_id: 0,
    }
}

fn parse_rate(label: &str, def: &TableDef, data: &str, rows: u64) {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        // Each batch is counted and dropped, as a source hands it on.
        let mut n = 0;
        let problems =
            strom_connectors::posix_fs::decode_bytes(def, data.as_bytes(), |b| n += b.num_rows())
                .expect("decodes");
        let elapsed = t.elapsed();
        assert_eq!(
            (n as u64, problems),
            (rows, 0),
            "{label}: every row, no problem"
        );
        best = best.min(elapsed);
    }
    let mb = data.len() as f64 / 1e6;
    println!(
        "parse {label}: {mb:.0} MB, {rows} rows in {:.3} s: {:.0} MB/s, {:.0} rows/s (one core)",
        best.as_secs_f64(),
        mb / best.as_secs_f64(),
        rows as f64 / best.as_secs_f64()
    );
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn ingest(label: &str, files: &[(String, u64)], suffix: &str, encode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = 0;
    let mut rows = 0;
    for (i, (text, n)) in files.iter().enumerate() {
        std::fs::write(
            dir.path()
                .join(format!("SG_JS_SCADA_20250313_17{i:04}.{suffix}")),
            text,
        )
        .unwrap();
        bytes += text.len();
        rows += n;
    }
    let server = BenchServer::start();
    let c = connect(server.port).await;
    let cpu0 = cpu_seconds(server.pid());
    let t = Instant::now();
    c.batch_execute(&format!(
        "CREATE SOURCE f ({COLUMNS}) WITH (connector = 'posix_fs', posix_fs.root = '{}',
           match_pattern = '*.{suffix}', posix_fs.poll.interval = '50ms') FORMAT PLAIN {encode};
         CREATE MATERIALIZED VIEW v AS SELECT count(*) AS n, sum(value) AS s FROM f;",
        dir.path().display()
    ))
    .await
    .unwrap();
    loop {
        let n: i64 = c
            .query_one("SELECT coalesce(n, 0) FROM v", &[])
            .await
            .unwrap()
            .get(0);
        if n as u64 >= rows {
            assert_eq!(n as u64, rows);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.pid()) - cpu0;
    let mb = bytes as f64 / 1e6;
    println!(
        "ingest {label}: {mb:.0} MB, {rows} rows in {secs:.2} s: {:.0} MB/s, {:.0} rows/s, server CPU {cpu:.1} s",
        mb / secs,
        rows as f64 / secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mb: usize = std::env::var("STROM_FILES_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let (e, e_rows) = e_file(1, mb << 20);
    parse_rate("E_FILE", &def("E_FILE", &[("block", "YC")]), &e, e_rows);
    drop(e);
    if std::env::var("STROM_FILES_PARSE_ONLY").is_ok() {
        return; // (for profiling the E-file decoder alone)
    }
    let (b, b_rows) = bar_file(1, mb << 20);
    parse_rate(
        "DELIMITED '||'",
        &def("DELIMITED", &[("delimiter", "||"), ("header", "true")]),
        &b,
        b_rows,
    );
    drop(b);
    let per = (mb << 20) / 8;
    ingest(
        "E_FILE",
        &files_of(e_file, per),
        "DT",
        "ENCODE E_FILE (block = 'YC')",
    )
    .await;
    ingest(
        "DELIMITED '||'",
        &files_of(bar_file, per),
        "TXT",
        "ENCODE DELIMITED (delimiter = '||', header = 'true')",
    )
    .await;
}

/// Eight files of `per` bytes each, rows numbered on across them.
fn files_of(make: fn(u64, usize) -> (String, u64), per: usize) -> Vec<(String, u64)> {
    let mut first = 1;
    (0..8)
        .map(|_| {
            let f = make(first, per);
            first += f.1;
            f
        })
        .collect()
}
