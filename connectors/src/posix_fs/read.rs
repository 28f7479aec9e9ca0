//! Reading one file: E and `||` files line by line through [`LineDecoder`]s into a
//! [`RowBuilder`], CSV files with Arrow's decoder; each batch committed with the file's
//! offset (see the parent module for the exactly-once rules).

use std::io::{BufRead, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::Schema;
use datafusion::scalar::ScalarValue;
use strom_catalog::TableDef;
use strom_engine::Database;

use super::{
    spec, stage_ledger, FileFormat, Outcome, Spec, BATCH_ROWS, DONE, FAILED, MAX_KEPT_REJECTIONS,
};
use crate::errors::{self, Rejected};
use crate::text_rows::{FileFacts, LineDecoder, Meta, RowBuilder, Sink, MAX_LINE_BYTES};
use crate::{delimited, efile, SourceStatus, Stop};

/// One line of a file, copied out of the reader.
struct Lines<R> {
    r: R,
    buf: Vec<u8>,
    pos: u64,
    line_no: u64,
}

impl<R: BufRead> Lines<R> {
    /// Feeds the next line (without its `\n`) to the decoder; `false` at the end of the
    /// file. A line wholly in the reader's buffer is fed from there, uncopied; a line
    /// longer than [`MAX_LINE_BYTES`] is a problem, and the decoder sees it empty so its
    /// line numbers stay right.
    fn feed_next(
        &mut self,
        dec: &mut dyn LineDecoder,
        sink: &mut dyn Sink,
    ) -> std::io::Result<bool> {
        let avail = self.r.fill_buf()?;
        if avail.is_empty() {
            return Ok(false);
        }
        if let Some(p) = memchr::memchr(b'\n', avail) {
            if p <= MAX_LINE_BYTES {
                self.pos += p as u64 + 1;
                self.line_no += 1;
                dec.line(&avail[..p], self.pos, sink);
                self.r.consume(p + 1);
                return Ok(true);
            }
        }
        // The line runs past the buffer: gather it.
        self.buf.clear();
        let mut too_long = false;
        loop {
            let avail = self.r.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            let (take, done) = match memchr::memchr(b'\n', avail) {
                Some(p) => (p, true),
                None => (avail.len(), false),
            };
            if !too_long {
                if self.buf.len() + take > MAX_LINE_BYTES {
                    too_long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(&avail[..take]);
                }
            }
            let used = take + done as usize;
            self.r.consume(used);
            self.pos += used as u64;
            if done {
                break;
            }
        }
        self.line_no += 1;
        let (n, end) = (self.line_no, self.pos);
        if too_long {
            sink.problem(
                n,
                end,
                format!("line {n}: longer than {MAX_LINE_BYTES} bytes"),
                b"",
            );
            dec.line(b"", end, sink);
        } else {
            dec.line(&self.buf, end, sink);
        }
        Ok(true)
    }
}

/// Collects records as rows and problems as rejections.
struct Collect<'a> {
    rows: RowBuilder,
    name: &'a str,
    /// What was committed before a restart: records and problems at or before this offset
    /// are not handed out again.
    skip_until: u64,
    pending: Vec<Rejected>,
    /// Problems since the last commit, and in all.
    uncommitted_problems: u64,
    problems: u64,
    good: u64,
    reasons: Vec<String>,
    /// Blocks of other classes since the last commit.
    skipped: u64,
}

impl<'a> Collect<'a> {
    fn new(rows: RowBuilder, name: &'a str, skip_until: u64) -> Collect<'a> {
        Collect {
            rows,
            name,
            skip_until,
            pending: Vec::new(),
            uncommitted_problems: 0,
            problems: 0,
            good: 0,
            reasons: Vec::new(),
            skipped: 0,
        }
    }
}

impl Sink for Collect<'_> {
    fn skipped_block(&mut self) {
        self.skipped += 1;
    }

    fn record(&mut self, r: &crate::text_rows::Record<'_>) {
        if r.end <= self.skip_until {
            return;
        }
        match self.rows.push(r) {
            Ok(()) => self.good += 1,
            Err(reason) => self.problem(
                r.line,
                r.end,
                format!("line {}: {reason}", r.line),
                r.raw.as_bytes(),
            ),
        }
    }

    fn problem(&mut self, line: u64, end: u64, reason: String, raw: &[u8]) {
        if end <= self.skip_until {
            return;
        }
        self.problems += 1;
        self.uncommitted_problems += 1;
        if self.reasons.len() < 20 {
            self.reasons.push(reason.clone());
        }
        if self.problems <= MAX_KEPT_REJECTIONS + 1 {
            let reason = if self.problems > MAX_KEPT_REJECTIONS {
                format!(
                    "file \"{}\": more bad lines from line {line} on are counted, not kept",
                    self.name
                )
            } else {
                format!("file \"{}\": {reason}", self.name)
            };
            self.pending.push(Rejected {
                topic: self.name.to_string(),
                partition: 0,
                offset: line as i64,
                reason,
                payload: raw[..raw.len().min(errors::MAX_KEPT_PAYLOAD)].to_vec(),
            });
        }
    }
}

/// Commits the collected rows and rejections with the file's offset; `false` when the
/// source was dropped meanwhile.
async fn commit(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    status: &Arc<SourceStatus>,
    sink: &mut Collect<'_>,
    offset: i64,
) -> Result<bool, String> {
    let batch = if sink.rows.rows() > 0 {
        Some(sink.rows.finish()?)
    } else {
        None
    };
    let rows = batch.as_ref().map_or(0, |b| b.num_rows() as u64);
    let mut txn = db.begin_write().await;
    if txn.catalog().table(def.id).is_none() {
        return Ok(false);
    }
    if let Some(batch) = batch {
        txn.append_batch(def.id, batch).map_err(|e| e.to_string())?;
    }
    for r in sink.pending.drain(..) {
        errors::stage_rejection(&mut txn, def.id, &r);
    }
    stage_ledger(&mut txn, def.id, sink.name, offset, sink.rows.facts.stamp);
    txn.commit().map_err(|e| e.to_string())?;
    status.add(rows, std::mem::take(&mut sink.uncommitted_problems));
    status.add_skipped(std::mem::take(&mut sink.skipped));
    Ok(true)
}

fn open_lines(path: &Path) -> Result<Lines<std::io::BufReader<std::fs::File>>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open \"{}\": {e}", path.display()))?;
    Ok(Lines {
        r: std::io::BufReader::with_capacity(1 << 20, file),
        buf: Vec::new(),
        pos: 0,
        line_no: 0,
    })
}

fn decoder(spec: &Spec, rows: &RowBuilder) -> Box<dyn LineDecoder + Send> {
    match &spec.format {
        FileFormat::EFile(o) => Box::new(efile::Parser::new(o.clone())),
        FileFormat::Delimited(o) => Box::new(delimited::Parser::new(
            o.clone(),
            rows.data_names().to_vec(),
        )),
        FileFormat::Csv { .. } => unreachable!("invariant: CSV files are read by read_csv"),
    }
}

/// Between two batches of a file: keeps to `source_rate_limit` (`emitted` rows since
/// `started`) and waits while the views are behind; `false` when the source is stopping.
async fn pace(
    db: &Arc<Database>,
    spec: &Spec,
    stop: &Stop,
    started: std::time::Instant,
    emitted: u64,
) -> bool {
    if stop.load(Ordering::Relaxed) {
        return false;
    }
    if let Some(limit) = spec.rate {
        let due = Duration::from_secs_f64(emitted as f64 / limit as f64);
        crate::pause_until(stop, started, due).await;
    }
    crate::wait_for_views(db, stop).await;
    true
}

/// Reads an E or delimited file, line by line.
pub(super) async fn read_text(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    spec: &Spec,
    stop: &Stop,
    status: &Arc<SourceStatus>,
    facts: FileFacts,
    offset: i64,
) -> Result<Option<Outcome>, String> {
    let name = facts.name.clone();
    let path = spec.root.join(&name);
    let io = |e: std::io::Error| format!("cannot read \"{}\": {e}", path.display());
    let mut rows = RowBuilder::new(def, spec.tz)?;
    rows.facts = facts;
    if spec.strict {
        // Strict: the whole file is checked first, and read only if nothing is wrong.
        let mut check = Collect::new(RowBuilder::new(def, spec.tz)?, &name, 0);
        let mut dec = decoder(spec, &rows);
        let mut lines = open_lines(&path)?;
        while lines.feed_next(dec.as_mut(), &mut check).map_err(io)? {
            if check.rows.rows() >= BATCH_ROWS {
                check.rows.finish()?; // only checked
            }
        }
        dec.finish(lines.pos, &mut check);
        check.rows.finish()?;
        if check.problems > 0 {
            check.good = 0;
            if !commit(db, def, status, &mut check, FAILED).await? {
                return Ok(None);
            }
            let mut reasons = vec![format!(
                "strict: {} problem(s); no row of the file was read",
                check.problems
            )];
            reasons.append(&mut check.reasons);
            return Ok(Some(Outcome {
                failed: true,
                reasons,
            }));
        }
    }
    let mut dec = decoder(spec, &rows);
    let mut sink = Collect::new(rows, &name, offset as u64);
    let mut lines = open_lines(&path)?;
    let batch_rows = spec.batch_rows();
    let (started, mut emitted) = (std::time::Instant::now(), 0u64);
    loop {
        let at_end = !lines.feed_next(dec.as_mut(), &mut sink).map_err(io)?;
        if at_end {
            dec.finish(lines.pos, &mut sink);
        }
        let full = sink.rows.rows() >= batch_rows || sink.pending.len() >= BATCH_ROWS;
        // Commit at the end, or when a batch is full past what was committed before.
        if !(at_end || full && lines.pos > sink.skip_until) {
            continue;
        }
        let failed = at_end && sink.good == 0 && sink.problems > 0 && offset == 0;
        let mark = match (at_end, failed) {
            (false, _) => lines.pos as i64,
            (true, false) => DONE,
            (true, true) => FAILED,
        };
        let n = sink.rows.rows() as u64;
        if !commit(db, def, status, &mut sink, mark).await? {
            return Ok(None);
        }
        if at_end {
            let mut reasons = sink.reasons;
            if failed {
                reasons.insert(0, "no row of the file could be read".into());
            }
            return Ok(Some(Outcome { failed, reasons }));
        }
        emitted += n;
        if !pace(db, spec, stop, started, emitted).await {
            return Ok(None);
        }
    }
}

/// Decodes an E or `||` file held in memory as the source reads one (for benchmarks and
/// tests), handing each batch to `each`; how many problems it had.
pub fn decode_bytes(
    def: &TableDef,
    bytes: &[u8],
    mut each: impl FnMut(RecordBatch),
) -> Result<u64, String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let spec = spec(def, c)?;
    if matches!(spec.format, FileFormat::Csv { .. }) {
        return Err("decode_bytes reads ENCODE E_FILE or DELIMITED".into());
    }
    let rows = RowBuilder::new(def, spec.tz)?;
    let mut dec = decoder(&spec, &rows);
    let mut sink = Collect::new(rows, "memory", 0);
    let mut lines = Lines {
        r: bytes,
        buf: Vec::new(),
        pos: 0,
        line_no: 0,
    };
    while lines
        .feed_next(dec.as_mut(), &mut sink)
        .map_err(|e| e.to_string())?
    {
        if sink.rows.rows() >= BATCH_ROWS {
            each(sink.rows.finish()?);
            sink.pending.clear();
        }
    }
    dec.finish(lines.pos, &mut sink);
    if sink.rows.rows() > 0 {
        each(sink.rows.finish()?);
    }
    Ok(sink.problems)
}

/// The columns of a CSV batch plus the file's `INCLUDE` values.
fn with_file_columns(
    def: &TableDef,
    data: RecordBatch,
    facts: &FileFacts,
) -> Result<RecordBatch, String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let n = data.num_rows();
    let mut data_cols = data.columns().iter();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, col) in def.visible_columns() {
        let dt = col.ty.to_arrow();
        match c.includes.iter().find(|inc| inc.column == i) {
            None => arrays.push(
                data_cols
                    .next()
                    .ok_or("invariant: a decoded column per data column")?
                    .clone(),
            ),
            Some(inc) => {
                let m = Meta::from_include(&inc.kind, inc.argument.as_deref())?;
                let text = |v: &Option<String>| ScalarValue::Utf8(v.clone());
                let ts = |v: Option<i64>| ScalarValue::TimestampMicrosecond(v, None);
                let value = match m {
                    Meta::FileName => ScalarValue::Utf8(Some(facts.name.clone())),
                    Meta::FilePath => ScalarValue::Utf8(Some(facts.path.clone())),
                    Meta::FileSize => ScalarValue::Int64(Some(facts.size)),
                    Meta::Company => text(&facts.company),
                    Meta::Subcompany => text(&facts.subcompany),
                    Meta::System => text(&facts.system),
                    Meta::Suffix => text(&facts.suffix),
                    Meta::SnapshotTime => ts(facts.snapshot),
                    Meta::IngestTime => ts(Some(facts.ingest)),
                    Meta::IngestLatency => {
                        ScalarValue::IntervalMonthDayNano(facts.snapshot.map(|s| {
                            datafusion::arrow::datatypes::IntervalMonthDayNano::new(
                                0,
                                0,
                                (facts.ingest - s) * 1000,
                            )
                        }))
                    }
                    Meta::NameOk => ScalarValue::Boolean(Some(facts.name_ok)),
                    _ => ScalarValue::try_from(&dt).map_err(|e| e.to_string())?,
                };
                let value = value.cast_to(&dt).map_err(|e| e.to_string())?;
                arrays.push(value.to_array_of_size(n).map_err(|e| e.to_string())?);
            }
        }
    }
    RecordBatch::try_new(crate::generated::schema(def), arrays).map_err(|e| e.to_string())
}

/// The declared columns a CSV file holds (all visible columns but the `INCLUDE`s).
fn csv_schema(def: &TableDef) -> Result<Arc<Schema>, String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let full = crate::generated::schema(def);
    Ok(Arc::new(Schema::new(
        def.visible_columns()
            .zip(full.fields().iter())
            .filter(|((i, _), _)| !c.includes.iter().any(|inc| inc.column == *i))
            .map(|(_, f)| f.as_ref().clone())
            .collect::<Vec<_>>(),
    )))
}

/// Columns a `log_by_reference` CSV source leaves out of its batches: nullable text
/// columns no view reads ([`Database::columns_read`]), as (CSV field, visible position).
/// Leaving one out changes nothing but its values (NULL in memory): Arrow's decoder
/// checks that every byte of a record is UTF-8 whatever fields it decodes, and a
/// nullable text field takes any text, so the rows decode, or fail, as they would whole.
/// A view that reads one later gets the batches made again whole from the file.
fn left_out_columns(db: &Database, def: &TableDef) -> Vec<(usize, usize)> {
    let (Some(c), Some(read)) = (def.connector.as_ref(), db.columns_read(def.id)) else {
        return Vec::new();
    };
    // The watermark expression is evaluated over the batch as read: what it mentions is
    // read too.
    let by_watermark = match db.watermarker(def) {
        Ok(w) => w.map(|w| w.columns_read()).unwrap_or_default(),
        Err(_) => return Vec::new(),
    };
    def.visible_columns()
        .enumerate()
        .filter(|(_, (i, _))| !c.includes.iter().any(|inc| inc.column == *i))
        .enumerate()
        .filter(|(_, (visible, (_, col)))| {
            read.get(*visible) == Some(&false)
                && !by_watermark.contains(visible)
                && col.nullable
                && col.ty.to_arrow() == datafusion::arrow::datatypes::DataType::Utf8
        })
        .map(|(field, (visible, _))| (field, visible))
        .collect()
}

/// A batch decoded without the `left_out` CSV fields, with each put back as NULLs.
fn put_back_left_out(
    data: RecordBatch,
    csv: &Schema,
    left_out: &[(usize, usize)],
) -> Result<RecordBatch, String> {
    if left_out.is_empty() {
        return Ok(data);
    }
    let n = data.num_rows();
    let mut decoded = data.columns().iter();
    let arrays = (0..csv.fields().len())
        .map(|f| match left_out.iter().any(|(l, _)| *l == f) {
            true => Some(datafusion::arrow::array::new_null_array(
                csv.field(f).data_type(),
                n,
            )),
            false => decoded.next().cloned(),
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("invariant: a decoded column per CSV field not left out")?;
    RecordBatch::try_new(Arc::new(csv.clone()), arrays).map_err(|e| e.to_string())
}

/// The version of [`CsvToken`]'s meaning. Bump it when a release decodes the same bytes
/// into other rows: batches logged by an older release are then reported lost (their
/// views fail, saying why) instead of replayed as different rows.
const CSV_TOKEN_VERSION: u8 = 1;

/// Where a CSV batch logged by reference came from (`log_by_reference`): the file and
/// byte range, whether the range starts with the header line, the rows and a CRC-32 of
/// the bytes (a file changed since is detected, not misread), and the file's facts as
/// they were (`INCLUDE ingest_time` is the time of the first read).
#[derive(serde::Serialize, serde::Deserialize)]
struct CsvToken {
    version: u8,
    start: u64,
    end: u64,
    header: bool,
    rows: u64,
    crc: u32,
    facts: FileFacts,
}

/// The change log's replayer for `posix_fs` sources: makes a CSV batch logged by
/// reference again from its file, or says why it cannot (the file is gone, shorter, or
/// its bytes changed).
pub fn replay_csv(def: &TableDef, token: &[u8]) -> Result<RecordBatch, String> {
    let t: CsvToken = serde_json::from_slice(token)
        .ok()
        .filter(|t: &CsvToken| t.version == CSV_TOKEN_VERSION)
        .ok_or_else(|| {
            format!("the batch was logged by another release (this one reads version {CSV_TOKEN_VERSION})")
        })?;
    let c = def.connector.as_ref().ok_or("no connector")?;
    let spec = spec(def, c)?;
    let FileFormat::Csv { delimiter, .. } = spec.format else {
        return Err("the source no longer reads CSV".into());
    };
    let path = spec.root.join(&t.facts.name);
    let mut file = std::fs::File::open(&path)
        .map_err(|e| format!("cannot open \"{}\": {e}", path.display()))?;
    file.seek(SeekFrom::Start(t.start))
        .map_err(|e| format!("cannot seek in \"{}\": {e}", path.display()))?;
    let mut bytes = vec![0; (t.end - t.start) as usize];
    std::io::Read::read_exact(&mut file, &mut bytes).map_err(|e| {
        format!(
            "cannot read bytes {}..{} of \"{}\" again: {e}",
            t.start,
            t.end,
            path.display()
        )
    })?;
    if crc32fast::hash(&bytes) != t.crc {
        return Err(format!(
            "bytes {}..{} of \"{}\" changed since they were read",
            t.start,
            t.end,
            path.display()
        ));
    }
    let mut decoder = ReaderBuilder::new(csv_schema(def)?)
        .with_delimiter(delimiter)
        .with_header(t.header)
        .with_batch_size((t.rows as usize).max(1))
        .build_decoder();
    // As the first read fed it (a call skips the header and returns): until the range
    // is used up, then the end of the data (a last line without a newline).
    let mut used = 0;
    while used < bytes.len() {
        let n = decoder.decode(&bytes[used..]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        used += n;
    }
    decoder.decode(&[]).map_err(|e| e.to_string())?;
    let data = decoder.flush().map_err(|e| e.to_string())?;
    let rows = data.as_ref().map_or(0, |b| b.num_rows() as u64);
    if used != bytes.len() || rows != t.rows {
        return Err(format!(
            "bytes {}..{} of \"{}\" decode into {rows} rows, not the {} read before",
            t.start,
            t.end,
            path.display(),
            t.rows
        ));
    }
    let data = data.ok_or("no rows")?;
    with_file_columns(def, data, &t.facts)
}

/// Reads a CSV file from byte `offset` to its end, one transaction per batch.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_csv(
    db: &Arc<Database>,
    def: &Arc<TableDef>,
    spec: &Spec,
    stop: &Stop,
    status: &Arc<SourceStatus>,
    facts: FileFacts,
    offset: i64,
    delimiter: u8,
    header: bool,
) -> Result<Option<Outcome>, String> {
    let name = facts.name.clone();
    let path = spec.root.join(&name);
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("cannot open \"{}\": {e}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 17, file);
    reader
        .seek(SeekFrom::Start(offset as u64))
        .map_err(|e| format!("cannot seek in \"{}\": {e}", path.display()))?;
    let csv = csv_schema(def)?;
    // Fixed for the file: a view created meanwhile that reads one gets the batches made
    // again whole (the stream runtime does it).
    let left_out = match spec.by_reference {
        true => left_out_columns(db, def),
        false => Vec::new(),
    };
    let mut builder = ReaderBuilder::new(Arc::clone(&csv))
        .with_delimiter(delimiter)
        .with_header(header && offset == 0)
        .with_batch_size(spec.batch_rows());
    if !left_out.is_empty() {
        builder = builder.with_projection(
            (0..csv.fields().len())
                .filter(|f| !left_out.iter().any(|(l, _)| l == f))
                .collect(),
        );
    }
    let mut decoder = builder.build_decoder();
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
    // Whether the next batch starts with the header line (only the first, from 0).
    let mut with_header = header && offset == 0;
    loop {
        // Decode until a batch is full or the file ends (the offset is then at a row
        // boundary).
        let mut at_end = false;
        let batch_start = pos;
        // The batch's bytes, for a token (`log_by_reference`).
        let mut crc = crc32fast::Hasher::new();
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
                if spec.by_reference {
                    crc.update(&buf[..n]);
                }
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
        let decoded = match decoded {
            Ok(Some(b)) => put_back_left_out(b, &csv, &left_out)
                .and_then(|b| with_file_columns(def, b, &facts))
                .map(Some),
            other => other,
        };
        let mut txn = db.begin_write().await;
        if txn.catalog().table(def.id).is_none() {
            return Ok(None); // dropped meanwhile
        }
        let rows = match decoded {
            Ok(batch) => {
                let rows = batch.as_ref().map_or(0, |b| b.num_rows() as u64);
                match batch {
                    Some(batch) if spec.by_reference => {
                        let token = CsvToken {
                            version: CSV_TOKEN_VERSION,
                            start: batch_start as u64,
                            end: pos as u64,
                            header: with_header,
                            rows: batch.num_rows() as u64,
                            crc: crc.clone().finalize(),
                            facts: facts.clone(),
                        };
                        let token = serde_json::to_vec(&token).map_err(|e| e.to_string())?;
                        let left_out = left_out.iter().map(|(_, v)| *v).collect();
                        txn.append_batch_by_reference(def.id, batch, token, left_out)
                            .map_err(|e| e.to_string())?;
                    }
                    Some(batch) => txn.append_batch(def.id, batch).map_err(|e| e.to_string())?,
                    None => {}
                }
                with_header = false;
                let mark = if at_end { DONE } else { pos };
                stage_ledger(&mut txn, def.id, &name, mark, facts.stamp);
                rows
            }
            Err(reason) => {
                // The batches before are kept; the failing batch is not (CSV rows are not
                // rejected one by one).
                let reason = format!("file \"{name}\": {reason}");
                tracing::warn!(source = %def.name, %reason, "CSV file failed");
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
                stage_ledger(&mut txn, def.id, &name, FAILED, facts.stamp);
                txn.commit().map_err(|e| e.to_string())?;
                status.add(0, 1);
                status.set_error(reason.clone());
                return Ok(Some(Outcome {
                    failed: true,
                    reasons: vec![reason],
                }));
            }
        };
        txn.commit().map_err(|e| e.to_string())?;
        status.add(rows, 0);
        if at_end {
            return Ok(Some(Outcome {
                failed: false,
                reasons: Vec::new(),
            }));
        }
        emitted += rows;
        if !pace(db, spec, stop, started, emitted).await {
            return Ok(None);
        }
    }
}
