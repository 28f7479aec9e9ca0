//! `connector = 'posix_fs'`: files dropped into a local directory (an SFTP drop), read once
//! each.
//!
//! ```sql
//! CREATE SOURCE scada_yc (seq INT, point_id VARCHAR, ts TIMESTAMP, value DOUBLE PRECISION)
//!   INCLUDE file_name AS _file_name INCLUDE snapshot_time AS _snapshot_ts INCLUDE line AS _line
//! WITH (connector = 'posix_fs', posix_fs.root = '/data/sftp/in/scada', match_pattern = '*.DT',
//!       name_pattern = '{company}_{subcompany}_{system}_{date:%Y%m%d}_{time:%H%M%S}.{suffix}',
//!       after_read = 'move:/data/sftp/done', error_dir = '/data/sftp/error')
//! FORMAT PLAIN ENCODE E_FILE (block = 'YC');
//! ```
//!
//! **Discovery.** The reader lists `posix_fs.root` every `posix_fs.poll.interval` (default
//! 500 ms), and at once when inotify reports a change ([`watch`]), and takes files whose
//! name matches `match_pattern` (`*` and `?`). Names of files still being written are
//! ignored (dot-files, `*.tmp`, `*.part`, `*.swp`). A file renamed into the directory is
//! complete as it appears; any other file is read only once its size and modification
//! time are unchanged between listings a full poll interval apart, so a file copied in
//! place is not read half-written. Files are read in (snapshot time, name) order
//! (the snapshot time comes from `name_pattern`; without one, name order).
//!
//! **Formats.** `ENCODE CSV` (Arrow's CSV decoder), `ENCODE E_FILE` ([`crate::efile`]) and
//! `ENCODE DELIMITED` ([`crate::delimited`]). The line-oriented formats reject bad content
//! row by row: each rejection is kept in `strom_catalog.source_errors` with the file name
//! (`topic`), the line number (`offset`), the reason and the line; the file's good rows are
//! still read. With `strict = 'true'` a file with any bad content is not read at all.
//!
//! **Exactly once per file.** Rows are handed to the views in batches of up to 8,192; each
//! batch commits, in the same transaction, the byte offset up to which the file has been
//! read, under the file's name (the source's offsets, `topic` = `file:<name>`); the last
//! batch commits [`DONE`]. After a crash the reader continues each file from its committed
//! offset (a line-oriented file is parsed again from its start, and what was committed is
//! skipped, so block context such as a header is known), and a finished file is never read
//! again. `after_read = 'delete' | 'move:<dir>'` acts on a file only after its DONE is
//! committed (and again after a restart, if the crash came between), then forgets the
//! file's ledger entry, so a later file of the same name is read. A file that fails (no
//! row could be read, a strict failure, an undecodable CSV batch, a name that does not
//! match `name_pattern`) is moved to `error_dir` with a `<name>.err` file giving the
//! reasons, or kept where it is without one; it is never deleted.
//!
//! **Logging by reference.** With `log_by_reference = 'true'` (CSV only) the change log
//! keeps each batch as a token (file, byte range, header flag, rows, CRC-32, the file's
//! facts) instead of its rows; after a restart [`replay_csv`] reads the unconsumed
//! batches again from their files, and a file whose bytes changed fails the source's
//! views, saying so. A file is then moved or deleted only once the views have consumed
//! every entry committed so far.
//!
//! **File names.** `name_pattern` ([`crate::file_name`]) gives company, sub-company,
//! system, snapshot time and suffix as `INCLUDE` columns. A file whose name does not match
//! is handled by `on_bad_name`: `quarantine` (the default: a rejection, and `error_dir`),
//! `skip` (left alone, unread) or `ingest` (read, with `INCLUDE name_ok` false).
//!
//! An I/O error is not the file's fault: the file is tried again at the next poll from its
//! committed offset, and the files after it go on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use datafusion::arrow::datatypes::DataType;
use strom_catalog::{ConnectorDef, TableDef, TableId};
use strom_engine::{Database, WriteTxn};

use crate::errors::{self, Rejected};
use crate::file_name::NamePattern;
use crate::text_rows::{local_micros, parse_timezone, Encoding, FileFacts, Meta};
use crate::{delimited, efile, SourceStatus, Stop};

mod read;
mod watch;

pub use read::{decode_bytes, replay_csv};

/// The committed offset of a file read to its end.
pub const DONE: i64 = i64::MAX;

/// Rows per batch (and transaction).
const BATCH_ROWS: usize = 8192;

/// Rejections kept per file; past this the rest are counted, and one more entry says how
/// many there were.
const MAX_KEPT_REJECTIONS: u64 = 1000;

const OPTIONS: &[&str] = &[
    "connector",
    "posix_fs.root",
    "match_pattern",
    "posix_fs.poll.interval",
    "source_rate_limit",
    "name_pattern",
    "on_bad_name",
    "after_read",
    "error_dir",
    "strict",
    "timezone",
    "log_by_reference",
];

/// Kinds of `INCLUDE` that hold one value per file.
const FILE_KINDS: &[&str] = Meta::PER_FILE;
/// Kinds of `INCLUDE` only `name_pattern` fills.
const NAME_KINDS: &[&str] = &[
    "company",
    "subcompany",
    "system",
    "suffix",
    "snapshot_time",
    "ingest_latency",
];

#[derive(Debug, Clone)]
pub enum FileFormat {
    Csv { delimiter: u8, header: bool },
    EFile(efile::Options),
    Delimited(delimited::Options),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AfterRead {
    Keep,
    Delete,
    Move(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Quarantine,
    Skip,
    Ingest,
}

/// A checked declaration.
#[derive(Debug, Clone)]
pub struct Spec {
    pub root: PathBuf,
    pub pattern: String,
    pub poll: Duration,
    pub format: FileFormat,
    /// Rows per second (`None`: as fast as the views take them).
    pub rate: Option<u64>,
    pub name_pattern: Option<NamePattern>,
    pub on_bad_name: BadName,
    pub after_read: AfterRead,
    /// `log_by_reference`: CSV rows go into the change log as (file, byte range,
    /// checksum), not as data; the file must stay until the views have consumed them.
    pub by_reference: bool,
    pub error_dir: Option<PathBuf>,
    pub strict: bool,
    /// The UTC offset (seconds) local times are at.
    pub tz: i32,
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

fn bool_option(name: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" => Ok(true),
        "false" | "off" | "no" => Ok(false),
        _ => Err(format!(
            "option \"{name}\" must be true or false, not '{v}'"
        )),
    }
}

fn null_tokens(v: &str) -> Vec<String> {
    v.split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn encoding_option(name: &str, v: &str) -> Result<Encoding, String> {
    Encoding::parse(v).ok_or_else(|| {
        format!("ENCODE option \"{name}\": '{v}' is not an encoding (utf-8, gbk, gb18030)")
    })
}

fn format_spec(c: &ConnectorDef) -> Result<FileFormat, String> {
    if !c.format.eq_ignore_ascii_case("PLAIN") {
        return Err(format!(
            "connector posix_fs reads FORMAT PLAIN (got {})",
            if c.format.is_empty() {
                "no FORMAT"
            } else {
                &c.format
            }
        ));
    }
    let unknown = |encode: &str, k: &str, known: &str| {
        Err(format!(
            "unknown ENCODE {encode} option \"{k}\" (known: {known})"
        ))
    };
    match c.encode.to_ascii_uppercase().as_str() {
        "CSV" => {
            let mut delimiter = b',';
            let mut header = true;
            for (k, v) in &c.encode_options {
                match k.as_str() {
                    "delimiter" => {
                        let b = v.as_bytes();
                        if b.len() != 1 {
                            return Err(format!(
                                "ENCODE CSV delimiter must be one ASCII character, not '{v}' (for longer delimiters use ENCODE DELIMITED)"
                            ));
                        }
                        delimiter = b[0];
                    }
                    "without_header" => header = !bool_option("without_header", v)?,
                    other => return unknown("CSV", other, "delimiter, without_header"),
                }
            }
            Ok(FileFormat::Csv { delimiter, header })
        }
        "E_FILE" => {
            let mut o = efile::Options::default();
            for (k, v) in &c.encode_options {
                match k.as_str() {
                    "block" => {
                        if v.trim().is_empty() {
                            return Err("ENCODE E_FILE block must name a class (or a pattern such as 'YC*')".into());
                        }
                        o.block = v.trim().to_string()
                    }
                    "separator" => {
                        o.separator = match v.trim().to_ascii_lowercase().as_str() {
                            "auto" => efile::Separator::Auto,
                            "tab" => efile::Separator::Tab,
                            "whitespace" | "space" => efile::Separator::Whitespace,
                            _ => {
                                return Err(format!(
                                    "ENCODE E_FILE separator must be auto, tab or whitespace, not '{v}'"
                                ))
                            }
                        }
                    }
                    "null_tokens" => o.null_tokens = null_tokens(v),
                    "encoding" => o.encoding = Some(encoding_option(k, v)?),
                    "fallback_encoding" => o.fallback = Some(encoding_option(k, v)?),
                    "trailing_comments" => o.trailing_comments = bool_option(k, v)?,
                    other => {
                        return unknown(
                            "E_FILE",
                            other,
                            "block, separator, null_tokens, encoding, fallback_encoding, trailing_comments",
                        )
                    }
                }
            }
            Ok(FileFormat::EFile(o))
        }
        "DELIMITED" => {
            let mut o = delimited::Options {
                delimiter: String::new(),
                header: delimited::Header::Auto,
                null_tokens: Vec::new(),
                encoding: Encoding::Utf8,
                fallback: None,
            };
            for (k, v) in &c.encode_options {
                match k.as_str() {
                    "delimiter" => o.delimiter = v.clone(),
                    "header" => {
                        o.header = match v.trim().to_ascii_lowercase().as_str() {
                            "auto" => delimited::Header::Auto,
                            "true" | "first_line" => delimited::Header::Yes,
                            "false" | "none" => delimited::Header::No,
                            _ => {
                                return Err(format!(
                                    "ENCODE DELIMITED header must be auto, true or false, not '{v}'"
                                ))
                            }
                        }
                    }
                    "null_tokens" => o.null_tokens = null_tokens(v),
                    "encoding" => o.encoding = encoding_option(k, v)?,
                    "fallback_encoding" => o.fallback = Some(encoding_option(k, v)?),
                    other => {
                        return unknown(
                            "DELIMITED",
                            other,
                            "delimiter, header, null_tokens, encoding, fallback_encoding",
                        )
                    }
                }
            }
            if o.delimiter.is_empty() {
                return Err("ENCODE DELIMITED needs a delimiter, like (delimiter = '||')".into());
            }
            if o.delimiter.contains(['\n', '\r']) {
                return Err("ENCODE DELIMITED delimiter cannot hold a line break".into());
            }
            Ok(FileFormat::Delimited(o))
        }
        other => Err(format!(
            "connector posix_fs reads ENCODE CSV, E_FILE or DELIMITED (got {})",
            if other.is_empty() { "no ENCODE" } else { other }
        )),
    }
}

fn dir_option(name: &str, v: &str, root: &Path) -> Result<PathBuf, String> {
    let p = PathBuf::from(v.trim());
    if v.trim().is_empty() {
        return Err(format!("option \"{name}\" needs a directory"));
    }
    if p == root {
        return Err(format!(
            "option \"{name}\": '{v}' is posix_fs.root itself; files there would be read again"
        ));
    }
    Ok(p)
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
    let root = PathBuf::from(root);
    let poll = match c.options.get("posix_fs.poll.interval") {
        Some(v) => strom_engine::lookup::parse_duration(v).ok_or_else(|| {
            format!("option \"posix_fs.poll.interval\": \"{v}\" is not a duration (like '500ms' or '2s')")
        })?,
        None => Duration::from_millis(500),
    };
    if poll.is_zero() {
        return Err("option \"posix_fs.poll.interval\" must be more than 0".into());
    }
    let format = format_spec(c)?;
    let name_pattern = c
        .options
        .get("name_pattern")
        .map(|p| NamePattern::compile(p))
        .transpose()?;
    let on_bad_name = match c
        .options
        .get("on_bad_name")
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => BadName::Quarantine,
        Some(v) if v == "quarantine" => BadName::Quarantine,
        Some(v) if v == "skip" => BadName::Skip,
        Some(v) if v == "ingest" => BadName::Ingest,
        Some(v) => {
            return Err(format!(
                "option \"on_bad_name\" must be quarantine, skip or ingest, not '{v}'"
            ))
        }
    };
    if c.options.contains_key("on_bad_name") && name_pattern.is_none() {
        return Err("option \"on_bad_name\" needs a name_pattern".into());
    }
    let after_read = match c.options.get("after_read").map(|v| v.trim()) {
        None | Some("keep") => AfterRead::Keep,
        Some("delete") => AfterRead::Delete,
        Some(v) => match v.strip_prefix("move:") {
            Some(dir) => AfterRead::Move(dir_option("after_read", dir, &root)?),
            None => {
                return Err(format!(
                    "option \"after_read\" must be keep, delete or move:<directory>, not '{v}'"
                ))
            }
        },
    };
    let error_dir = c
        .options
        .get("error_dir")
        .map(|v| dir_option("error_dir", v, &root))
        .transpose()?;
    let strict = match c.options.get("strict") {
        Some(v) => bool_option("strict", v)?,
        None => false,
    };
    let by_reference = match c.options.get("log_by_reference") {
        Some(v) => bool_option("log_by_reference", v)?,
        None => false,
    };
    if by_reference && !matches!(format, FileFormat::Csv { .. }) {
        return Err(
            "option \"log_by_reference\" needs ENCODE CSV (line-oriented files are logged as rows)"
                .into(),
        );
    }
    let tz = match c.options.get("timezone") {
        Some(v) => parse_timezone(v).ok_or_else(|| {
            format!("option \"timezone\": '{v}' is not a fixed offset (like '+08:00' or 'UTC') or a UTC+8 zone (Asia/Shanghai)")
        })?,
        None => 8 * 3600,
    };
    for inc in &c.includes {
        Meta::from_include(&inc.kind, inc.argument.as_deref())?;
        let per_file = FILE_KINDS.contains(&inc.kind.as_str());
        match &format {
            FileFormat::Csv { .. } if !per_file => {
                return Err(format!(
                    "INCLUDE {} is not available with ENCODE CSV (it has {})",
                    inc.kind,
                    FILE_KINDS.join(", ")
                ))
            }
            FileFormat::Delimited(_) if !per_file && inc.kind != "line" => {
                return Err(format!(
                    "INCLUDE {} needs ENCODE E_FILE (ENCODE DELIMITED has line and {})",
                    inc.kind,
                    FILE_KINDS.join(", ")
                ))
            }
            _ => {}
        }
        if NAME_KINDS.contains(&inc.kind.as_str()) && name_pattern.is_none() {
            return Err(format!(
                "INCLUDE {} comes from the file name: it needs a name_pattern option",
                inc.kind
            ));
        }
    }
    for (i, col) in def.visible_columns() {
        if c.includes.iter().any(|inc| inc.column == i) {
            continue;
        }
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
                "column \"{}\": ENCODE {} cannot read type {}",
                col.name,
                c.encode.to_ascii_uppercase(),
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
        root,
        pattern: c
            .options
            .get("match_pattern")
            .cloned()
            .unwrap_or_else(|| "*".into()),
        poll,
        format,
        name_pattern,
        on_bad_name,
        after_read,
        by_reference,
        error_dir,
        strict,
        tz,
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

/// The ledger's second entry per file (partition 1 of `file:<name>`): a stamp of the
/// file's size and modification time, so a later file of the same name is a new file.
pub(crate) const STAMP_PARTITION: i32 = 1;

/// Stages a file's ledger entry: how far it has been read (or [`DONE`], [`FAILED`]), and
/// its stamp.
pub(crate) fn stage_ledger(
    txn: &mut WriteTxn<'_>,
    source: TableId,
    name: &str,
    offset: i64,
    stamp: i64,
) {
    let topic = state_topic(name);
    errors::stage_offset(txn, source, &topic, 0, offset);
    errors::stage_offset(txn, source, &topic, STAMP_PARTITION, stamp);
}

/// Stages forgetting a file's ledger entry (the file left, or a new one took its name).
fn stage_forget_ledger(txn: &mut WriteTxn<'_>, source: TableId, name: &str) {
    let topic = state_topic(name);
    errors::stage_forget_offset(txn, source, &topic, 0);
    errors::stage_forget_offset(txn, source, &topic, STAMP_PARTITION);
}

/// The identity of a file's content as far as the ledger is concerned.
pub(crate) fn file_stamp(len: u64, mtime: Option<SystemTime>) -> i64 {
    let nanos = mtime
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    (len as i64).wrapping_mul(1_000_000_007) ^ nanos
}

/// The committed offset of a file that failed (never read again; kept or moved to
/// `error_dir`, never deleted).
pub const FAILED: i64 = i64::MAX - 1;

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

/// A file found in the directory.
struct Candidate {
    name: String,
    len: u64,
    mtime: Option<SystemTime>,
    /// What `name_pattern` says (`None`: no pattern, or the name does not match).
    facts: Option<crate::file_name::NameFacts>,
    name_ok: bool,
}

/// How a file ended.
struct Outcome {
    failed: bool,
    /// The first reasons, for the `.err` file.
    reasons: Vec<String>,
}

async fn run_once(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    stop: &Stop,
    status: &Arc<SourceStatus>,
) -> Result<(), String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let spec = spec(def, c)?;
    let dirs = [
        spec.error_dir.as_ref(),
        match &spec.after_read {
            AfterRead::Move(d) => Some(d),
            _ => None,
        },
    ];
    for d in dirs.into_iter().flatten() {
        std::fs::create_dir_all(d)
            .map_err(|e| format!("cannot create directory \"{}\": {e}", d.display()))?;
    }
    let watcher = watch::Watcher::start(&spec.root);
    // Size and modification time of each candidate, and since when they are unchanged.
    let mut seen: HashMap<String, ((u64, Option<SystemTime>), Instant)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        // Taken before listing: every name in it is in the listing unless gone again.
        let renamed = watcher
            .as_ref()
            .map(|w| w.take_renamed())
            .unwrap_or_default();
        let listing = std::fs::read_dir(&spec.root)
            .map_err(|e| format!("cannot list posix_fs.root \"{}\": {e}", spec.root.display()))?;
        let mut files: Vec<Candidate> = Vec::new();
        for entry in listing.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            // A name that is not UTF-8 cannot be recorded in the ledger: skipped.
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !meta.is_file() || is_temporary(&name) || !glob_match(&spec.pattern, &name) {
                continue;
            }
            let facts = spec.name_pattern.as_ref().and_then(|p| p.facts(&name));
            let name_ok = spec.name_pattern.is_none() || facts.is_some();
            if !name_ok && spec.on_bad_name == BadName::Skip {
                continue;
            }
            files.push(Candidate {
                name,
                len: meta.len(),
                mtime: meta.modified().ok(),
                facts,
                name_ok,
            });
        }
        // (snapshot time, name) order: replays are deterministic.
        files.sort_by(|a, b| {
            let key = |c: &Candidate| c.facts.as_ref().and_then(|f| f.snapshot);
            key(a).cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
        });
        // Stability is judged between listings (a file's turn may come long after).
        let listed_at = Instant::now();
        let mut next_seen = HashMap::new();
        for file in files {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let snapshot = db.snapshot();
            let topic = state_topic(&file.name);
            let mut offset = errors::committed_offset(&snapshot, def.id, &topic, 0)
                .map_err(|e| e.to_string())?
                .unwrap_or(0);
            let stamp = errors::committed_offset(&snapshot, def.id, &topic, STAMP_PARTITION)
                .map_err(|e| e.to_string())?;
            if (offset == DONE || offset == FAILED)
                && stamp.is_some_and(|s| s != file_stamp(file.len, file.mtime))
            {
                // Another file of the same name (a different size or time): a new file.
                let mut txn = db.begin_write().await;
                stage_forget_ledger(&mut txn, def.id, &file.name);
                txn.commit().map_err(|e| e.to_string())?;
                offset = 0;
            }
            if offset == DONE || offset == FAILED {
                // Finished before a crash that came before its after_read action.
                let outcome = Outcome {
                    failed: offset == FAILED,
                    reasons: vec!["see strom_catalog.source_errors".into()],
                };
                if let Err(e) = finish_file(db, def, &spec, stop, &file.name, &outcome).await {
                    status.set_error(e);
                }
                continue;
            }
            // Complete once unchanged for a poll interval (listings come sooner when
            // inotify wakes the reader); a file renamed into place as it appears.
            let now = (file.len, file.mtime);
            let since = match seen.get(&file.name) {
                Some((was, since)) if *was == now => *since,
                _ => listed_at,
            };
            next_seen.insert(file.name.clone(), (now, since));
            let stable =
                renamed.contains(&file.name) || listed_at.duration_since(since) >= spec.poll;
            if !stable {
                continue;
            }
            let result = if !file.name_ok && spec.on_bad_name == BadName::Quarantine {
                quarantine(db, def, status, &file).await
            } else {
                read_file(db, def, &spec, stop, status, &file, offset).await
            };
            // A file that cannot be read now (permissions, an I/O error) is tried again
            // at the next poll, from its committed offset; the files after it go on.
            match result {
                Ok(Some(outcome)) => {
                    if let Err(e) = finish_file(db, def, &spec, stop, &file.name, &outcome).await {
                        tracing::warn!(source = %def.name, error = %e, "after_read failed");
                        status.set_error(e);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(source = %def.name, error = %e, "file read failed");
                    status.set_error(e);
                }
            }
        }
        seen = next_seen;
        watch::wait(watcher.as_ref(), spec.poll).await;
    }
    Ok(())
}

/// A file whose name does not match `name_pattern`: one rejection, and `error_dir`.
async fn quarantine(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    status: &Arc<SourceStatus>,
    file: &Candidate,
) -> Result<Option<Outcome>, String> {
    let name = file.name.as_str();
    let reason = format!("file \"{name}\": the name does not match name_pattern");
    let mut txn = db.begin_write().await;
    if txn.catalog().table(def.id).is_none() {
        return Ok(None);
    }
    errors::stage_rejection(
        &mut txn,
        def.id,
        &Rejected {
            topic: name.to_string(),
            partition: 0,
            offset: 0,
            reason: reason.clone(),
            payload: Vec::new(),
        },
    );
    stage_ledger(
        &mut txn,
        def.id,
        name,
        FAILED,
        file_stamp(file.len, file.mtime),
    );
    txn.commit().map_err(|e| e.to_string())?;
    status.add(0, 1);
    Ok(Some(Outcome {
        failed: true,
        reasons: vec![reason],
    }))
}

/// After a file's end is committed: `after_read` for a file read, `error_dir` for a file
/// that failed; then the file's ledger entry is forgotten if the file left the directory.
async fn finish_file(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    spec: &Spec,
    stop: &Stop,
    name: &str,
    outcome: &Outcome,
) -> Result<(), String> {
    let path = spec.root.join(name);
    let moves = if outcome.failed {
        spec.error_dir.is_some()
    } else {
        spec.after_read != AfterRead::Keep
    };
    if moves && spec.by_reference {
        if !wait_until_consumed(db, &def.name, name, stop).await? {
            // Stopping: the file is finished at the next start.
            return Ok(());
        }
        // The wait takes an epoch or more: a file put in place under the same name
        // meanwhile is another file, which the next listing reads (its stamp differs
        // from the ledger's); it must not be moved or deleted unread.
        let committed =
            errors::committed_offset(&db.snapshot(), def.id, &state_topic(name), STAMP_PARTITION)
                .map_err(|e| e.to_string())?;
        let now = std::fs::metadata(&path)
            .ok()
            .map(|m| file_stamp(m.len(), m.modified().ok()));
        if now.is_some() && now != committed {
            return Ok(());
        }
    }
    let gone = if outcome.failed {
        match &spec.error_dir {
            Some(dir) => {
                move_file(&path, dir, name)?;
                let mut why = outcome.reasons.join("\n");
                why.push('\n');
                std::fs::write(dir.join(format!("{name}.err")), why).map_err(|e| {
                    format!(
                        "cannot write \"{}.err\" in \"{}\": {e}",
                        name,
                        dir.display()
                    )
                })?;
                true
            }
            None => false,
        }
    } else {
        match &spec.after_read {
            AfterRead::Keep => false,
            AfterRead::Delete => {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot delete \"{}\": {e}", path.display())),
                }
                true
            }
            AfterRead::Move(dir) => {
                move_file(&path, dir, name)?;
                true
            }
        }
    };
    if gone {
        let mut txn = db.begin_write().await;
        stage_forget_ledger(&mut txn, def.id, name);
        txn.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// With `log_by_reference` the change log holds only where a file's rows are (see
/// [`replay_csv`]): waits until the views have consumed every entry committed so far,
/// which includes every entry that points into the file. `false` when stopped first.
async fn wait_until_consumed(
    db: &Arc<Database>,
    source: &str,
    file: &str,
    stop: &Stop,
) -> Result<bool, String> {
    let target = db.last_change_seq();
    let (started, mut warned) = (Instant::now(), Duration::ZERO);
    loop {
        let consumed = strom_engine::changelog::consumed(db.store()).map_err(|e| e.to_string())?;
        if consumed >= target {
            return Ok(true);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(false);
        }
        // The views stopped consuming (a failed stream runtime): say why the source
        // reads no further files.
        if started.elapsed() >= warned + Duration::from_secs(30) {
            warned = started.elapsed();
            tracing::warn!(
                source,
                file,
                "log_by_reference: waiting for the views to consume the file's rows before after_read"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Moves a file into `dir` (renames, or copies and removes across file systems). A file
/// already gone counts as moved; a directory gone meanwhile is made again.
fn move_file(path: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let to = dir.join(name);
    match std::fs::rename(path, &to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !path.exists() {
                return Ok(());
            }
            std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::rename(path, &to))
                .map_err(|e| {
                    format!(
                        "cannot move \"{}\" to \"{}\": {e}",
                        path.display(),
                        dir.display()
                    )
                })
        }
        Err(_) => std::fs::copy(path, &to)
            .and_then(|_| std::fs::remove_file(path))
            .map_err(|e| {
                format!(
                    "cannot move \"{}\" to \"{}\": {e}",
                    path.display(),
                    dir.display()
                )
            }),
    }
}

fn file_facts(spec: &Spec, file: &Candidate) -> FileFacts {
    let f = file.facts.clone().unwrap_or_default();
    FileFacts {
        name: file.name.clone(),
        path: spec.root.join(&file.name).display().to_string(),
        size: file.len as i64,
        company: f.company,
        subcompany: f.subcompany,
        system: f.system,
        suffix: f.suffix,
        snapshot: f.snapshot.map(|t| local_micros(t, spec.tz)),
        stamp: file_stamp(file.len, file.mtime),
        ingest: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64),
        name_ok: file.name_ok,
    }
}

/// Reads a file from its committed offset to its end; `None` when stopped (or the source
/// dropped) on the way.
async fn read_file(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    spec: &Spec,
    stop: &Stop,
    status: &Arc<SourceStatus>,
    file: &Candidate,
    offset: i64,
) -> Result<Option<Outcome>, String> {
    let facts = file_facts(spec, file);
    if let Some(s) = facts.snapshot {
        status.set_latency_ms((facts.ingest - s) / 1000);
    }
    match &spec.format {
        FileFormat::Csv { delimiter, header } => {
            read::read_csv(
                db, def, spec, stop, status, facts, offset, *delimiter, *header,
            )
            .await
        }
        _ => read::read_text(db, def, spec, stop, status, facts, offset).await,
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
