//! `connector = 'posix_fs'`: files dropped into a local directory, read once each.
//!
//! ```sql
//! CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP)
//! WITH (connector = 'posix_fs', posix_fs.root = '/data/in/bids', match_pattern = '*.csv')
//! FORMAT PLAIN ENCODE CSV (without_header = 'true', delimiter = ',');
//! ```
//!
//! The reader lists the directory every `posix_fs.poll.interval` (default 500 ms) and takes
//! files whose name matches `match_pattern` (`*` and `?` wildcards), in name order. Names
//! of files still being written are ignored: dot-files and `*.tmp`, `*.part`, `*.swp`. A
//! file is read only once its size and modification time are the same on two polls, so a
//! file copied in place (not renamed) is not read half-written.
//!
//! **Exactly once per file.** Rows are decoded column-wise (Arrow's CSV decoder) and handed
//! to the views as batches of up to 8,192 rows. Each batch commits, in the same
//! transaction, the byte offset after its last row under the file's name (the source's
//! offsets, `topic` = `file:<name>`); the file's last batch commits [`DONE`] instead. After
//! a crash the reader resumes each file at its committed offset, so no row is lost or
//! repeated, and a finished file is never read again.
//!
//! `source_rate_limit` (rows per second) slows reading down (for tests and for sharing a
//! machine).
//!
//! A file that does not decode (a field that does not parse as its column's type, a row
//! with too few fields) stops at the batch that failed: the batches before it are kept,
//! the failing batch is not (rows are not yet rejected one by one), the file is marked
//! done, and the failure is kept as a rejection (`strom_catalog.source_errors`, with the
//! file name and the byte offset where the failing batch starts) and shown in the
//! source's status. An I/O error is not the file's fault: the file is tried again at the
//! next poll from its committed offset. A UTF-8 byte-order mark is skipped.

use std::collections::HashMap;
use std::io::{BufRead, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::DataType;
use strom_catalog::{ConnectorDef, TableDef};
use strom_engine::Database;

use crate::errors::{self, Rejected};
use crate::{SourceStatus, Stop};

/// The committed offset of a file read to its end.
pub const DONE: i64 = i64::MAX;

/// Rows per batch (and transaction).
const BATCH_ROWS: usize = 8192;

const OPTIONS: &[&str] = &[
    "connector",
    "posix_fs.root",
    "match_pattern",
    "posix_fs.poll.interval",
    "source_rate_limit",
];

/// A checked declaration.
#[derive(Debug, Clone)]
pub struct Spec {
    pub root: PathBuf,
    pub pattern: String,
    pub poll: Duration,
    pub delimiter: u8,
    pub header: bool,
    /// Rows per second (`None`: as fast as the views take them).
    pub rate: Option<u64>,
}

impl Spec {
    /// Rows per batch: smaller under a low rate, so the rate is smooth.
    fn batch_rows(&self) -> usize {
        match self.rate {
            Some(r) => (r / 10).clamp(1, BATCH_ROWS as u64) as usize,
            None => BATCH_ROWS,
        }
    }
}

pub fn spec(def: &TableDef, c: &ConnectorDef) -> Result<Spec, String> {
    for k in c.options.keys() {
        if !OPTIONS.contains(&k.as_str()) {
            return Err(format!(
                "unknown option \"{k}\" for connector posix_fs (known: {})",
                OPTIONS.join(", ")
            ));
        }
    }
    if !c.is_source || c.is_sink {
        return Err("connector posix_fs reads files: use CREATE SOURCE".into());
    }
    let root = c
        .options
        .get("posix_fs.root")
        .filter(|r| !r.trim().is_empty())
        .ok_or("option \"posix_fs.root\" (the directory to read) is required")?;
    let poll = match c.options.get("posix_fs.poll.interval") {
        Some(v) => strom_engine::lookup::parse_duration(v).ok_or_else(|| {
            format!("option \"posix_fs.poll.interval\": \"{v}\" is not a duration (like '500ms' or '2s')")
        })?,
        None => Duration::from_millis(500),
    };
    if poll.is_zero() {
        return Err("option \"posix_fs.poll.interval\" must be more than 0".into());
    }
    if !c.format.eq_ignore_ascii_case("PLAIN") || !c.encode.eq_ignore_ascii_case("CSV") {
        return Err(format!(
            "connector posix_fs reads FORMAT PLAIN ENCODE CSV (got {} {})",
            if c.format.is_empty() {
                "no FORMAT"
            } else {
                &c.format
            },
            if c.encode.is_empty() { "" } else { &c.encode },
        ));
    }
    if !c.includes.is_empty() {
        return Err("connector posix_fs takes no INCLUDE columns yet".into());
    }
    let mut delimiter = b',';
    let mut header = true;
    for (k, v) in &c.encode_options {
        match k.as_str() {
            "delimiter" => {
                let b = v.as_bytes();
                if b.len() != 1 {
                    return Err(format!(
                        "ENCODE CSV delimiter must be one ASCII character, not '{v}'"
                    ));
                }
                delimiter = b[0];
            }
            "without_header" => {
                header = match v.to_ascii_lowercase().as_str() {
                    "true" => false,
                    "false" => true,
                    _ => {
                        return Err(format!(
                            "ENCODE CSV without_header must be true or false, not '{v}'"
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "unknown ENCODE CSV option \"{other}\" (known: delimiter, without_header)"
                ))
            }
        }
    }
    for (_, col) in def.visible_columns() {
        let ty = col.ty.to_arrow();
        let ok = matches!(
            ty,
            DataType::Boolean
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::Float32
                | DataType::Float64
                | DataType::Utf8
                | DataType::Date32
                | DataType::Timestamp(_, _)
                | DataType::Decimal128(_, _)
        );
        if !ok {
            return Err(format!(
                "column \"{}\": ENCODE CSV cannot read type {}",
                col.name,
                col.ty.pg_name()
            ));
        }
    }
    let rate = match c.options.get("source_rate_limit") {
        None => None,
        Some(v) => match v.trim().parse::<u64>() {
            Ok(r) if r > 0 => Some(r),
            _ => {
                return Err(format!(
                "option \"source_rate_limit\": \"{v}\" is not a positive number of rows per second"
            ))
            }
        },
    };
    Ok(Spec {
        rate,
        root: PathBuf::from(root),
        pattern: c
            .options
            .get("match_pattern")
            .cloned()
            .unwrap_or_else(|| "*".into()),
        poll,
        delimiter,
        header,
    })
}

/// Whether `name` matches a pattern of `*` (any run) and `?` (any one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer wildcard match with backtracking to the last `*`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Names a writer uses while a file is incomplete.
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.')
        || [".tmp", ".part", ".swp"]
            .iter()
            .any(|s| name.to_ascii_lowercase().ends_with(s))
}

fn state_topic(name: &str) -> String {
    format!("file:{name}")
}

pub async fn run(db: Arc<Database>, def: Arc<TableDef>, stop: Stop, status: Arc<SourceStatus>) {
    let what = format!("source \"{}\"", def.name);
    crate::retry_until_stopped(&what, &stop, &status, || {
        run_once(&db, &def, &stop, &status)
    })
    .await
}

async fn run_once(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    stop: &Stop,
    status: &Arc<SourceStatus>,
) -> Result<(), String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let spec = spec(def, c)?;
    // Size and modification time of each candidate at the last poll.
    let mut seen: HashMap<String, (u64, Option<SystemTime>)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let listing = std::fs::read_dir(&spec.root)
            .map_err(|e| format!("cannot list posix_fs.root \"{}\": {e}", spec.root.display()))?;
        let mut names: Vec<(String, u64, Option<SystemTime>)> = Vec::new();
        for entry in listing.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            // A name that is not UTF-8 cannot be recorded in the ledger: skipped.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if meta.is_file() && !is_temporary(&name) && glob_match(&spec.pattern, &name) {
                names.push((name, meta.len(), meta.modified().ok()));
            }
        }
        names.sort();
        let mut next_seen = HashMap::new();
        for (name, len, mtime) in names {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let offset = errors::committed_offset(&db.snapshot(), def.id, &state_topic(&name), 0)
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            if offset == DONE {
                continue;
            }
            // Complete once unchanged over a poll interval.
            let stable = seen.get(&name) == Some(&(len, mtime));
            next_seen.insert(name.clone(), (len, mtime));
            if !stable {
                continue;
            }
            // A file that cannot be read now (permissions, an I/O error) is tried again
            // at the next poll, from its committed offset; the files after it go on.
            if let Err(e) = read_file(db, def, &spec, stop, status, &name, offset).await {
                tracing::warn!("source \"{}\": {e}", def.name);
                status.set_error(e);
            }
        }
        seen = next_seen;
        tokio::time::sleep(spec.poll).await;
    }
    Ok(())
}

/// Reads `name` from byte `offset` to its end, one transaction per batch.
async fn read_file(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    spec: &Spec,
    stop: &Stop,
    status: &Arc<SourceStatus>,
    name: &str,
    offset: i64,
) -> Result<(), String> {
    let path = spec.root.join(name);
    let topic = state_topic(name);
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("cannot open \"{}\": {e}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(offset as u64))
        .map_err(|e| format!("cannot seek in \"{}\": {e}", path.display()))?;
    let mut decoder = ReaderBuilder::new(crate::generated::schema(def))
        .with_delimiter(spec.delimiter)
        .with_header(spec.header && offset == 0)
        .with_batch_size(spec.batch_rows())
        .build_decoder();
    let mut pos = offset;
    if offset == 0 {
        // A UTF-8 byte-order mark is not data.
        let buf = reader
            .fill_buf()
            .map_err(|e| format!("cannot read \"{}\": {e}", path.display()))?;
        if buf.starts_with(b"\xEF\xBB\xBF") {
            reader.consume(3);
            pos = 3;
        }
    }
    let (started, mut emitted) = (std::time::Instant::now(), 0u64);
    loop {
        // Decode until a batch is full or the file ends (the offset is then at a row
        // boundary).
        let mut at_end = false;
        let batch_start = pos;
        // An I/O error returns (the file is tried again from its committed offset); a
        // decode error is the file's content, kept as a rejection.
        let mut io_error = None;
        let decoded: Result<Option<RecordBatch>, String> = (|| {
            loop {
                let buf = match reader.fill_buf() {
                    Ok(buf) => buf,
                    Err(e) => {
                        io_error = Some(format!("cannot read \"{}\": {e}", path.display()));
                        return Ok(None);
                    }
                };
                let n = decoder.decode(buf).map_err(|e| e.to_string())?;
                let empty = buf.is_empty();
                reader.consume(n);
                pos += n as i64;
                if empty && n == 0 {
                    at_end = true;
                    break;
                }
                if decoder.capacity() == 0 {
                    break;
                }
            }
            decoder.flush().map_err(|e| e.to_string())
        })();
        if let Some(e) = io_error {
            return Err(e);
        }
        let mut txn = db.begin_write().await;
        if txn.catalog().table(def.id).is_none() {
            return Ok(()); // dropped meanwhile
        }
        let rows = match decoded {
            Ok(batch) => {
                let rows = batch.as_ref().map_or(0, |b| b.num_rows() as u64);
                if let Some(batch) = batch {
                    txn.append_batch(def.id, batch).map_err(|e| e.to_string())?;
                }
                errors::stage_offset(&mut txn, def.id, &topic, 0, if at_end { DONE } else { pos });
                rows
            }
            Err(reason) => {
                let reason = format!("file \"{name}\": {reason}");
                tracing::warn!("source \"{}\": {reason}", def.name);
                errors::stage_rejection(
                    &mut txn,
                    def.id,
                    &Rejected {
                        topic: name.to_string(),
                        partition: 0,
                        // Where the failing batch starts.
                        offset: batch_start,
                        reason: reason.clone(),
                        payload: Vec::new(),
                    },
                );
                errors::stage_offset(&mut txn, def.id, &topic, 0, DONE);
                txn.commit().map_err(|e| e.to_string())?;
                status.add(0, 1);
                status.set_error(reason);
                return Ok(());
            }
        };
        txn.commit().map_err(|e| e.to_string())?;
        status.add(rows, 0);
        if at_end || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        emitted += rows;
        if let Some(limit) = spec.rate {
            let due = Duration::from_secs_f64(emitted as f64 / limit as f64);
            crate::pause_until(stop, started, due).await;
        }
        crate::wait_for_views(db, stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_a_shell() {
        assert!(glob_match("*.csv", "bids.csv"));
        assert!(glob_match("*.csv", ".csv"));
        assert!(!glob_match("*.csv", "bids.csv.gz"));
        assert!(glob_match(
            "AA_*_SCADA_*.DT",
            "AA_BB_SCADA_20150313_170507.DT"
        ));
        assert!(!glob_match(
            "AA_*_SCADA_*.DT",
            "AA_BB_EMS_20150313_170507.DT"
        ));
        assert!(glob_match("b?d.*", "bid.txt"));
        assert!(!glob_match("b?d.*", "bd.txt"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**a*", "xxa"));
        assert!(!glob_match("a", "ab"));
    }

    #[test]
    fn temporary_names_are_ignored() {
        for n in [".bids.csv", "bids.csv.tmp", "x.PART", "y.swp"] {
            assert!(is_temporary(n), "{n}");
        }
        assert!(!is_temporary("bids.csv"));
    }
}
