//! What the line-oriented file decoders (`ENCODE E_FILE`, `ENCODE DELIMITED`) share: the
//! record they hand out, the sink that receives records and problems, text decoding
//! (UTF-8, GBK/GB18030), the calendar-time parser for the forms grid files use, and the
//! [`RowBuilder`] that turns text fields into typed Arrow columns.
//!
//! A decoder is fed one line at a time ([`LineDecoder::line`]) with the byte offset just
//! after that line. Every record and problem it reports carries that offset (`end`), so a
//! reader that committed "everything completed by offset X" can parse the file again from
//! the start after a crash and drop what it reports at or before X: no row is lost or
//! repeated, whatever the layout (a transposed `@#` block completes all its records at its
//! closing line).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder, Float64Builder,
    Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::kernels::cast_utils::{parse_decimal, Parser};
use arrow::datatypes::{
    DataType, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    IntervalMonthDayNano, SchemaRef,
};
use strom_catalog::TableDef;

mod time;

use time::{days_from_civil, parse_parts};
pub use time::{local_micros, parse_datetime, parse_datetime_micros, parse_timezone};

/// The longest line a decoder keeps; a longer one is a problem and is skipped.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Text encodings of grid files. `Gbk` decodes GB18030, its superset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Gbk,
}

impl Encoding {
    /// The encoding named by an option or an E-file declaration (`Code=GBK`).
    pub fn parse(name: &str) -> Option<Encoding> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Some(Encoding::Utf8),
            "gbk" | "gb2312" | "gb18030" | "cp936" => Some(Encoding::Gbk),
            _ => None,
        }
    }
}

/// Decodes one line. Invalid bytes are an error naming the first bad byte, unless a
/// fallback encoding decodes the line.
pub fn decode_line(
    raw: &[u8],
    enc: Encoding,
    fallback: Option<Encoding>,
) -> Result<Cow<'_, str>, String> {
    let first = match enc {
        // SIMD validation; the standard one only to name the bad byte.
        Encoding::Utf8 => match simdutf8::basic::from_utf8(raw) {
            Ok(t) => Ok(Cow::Borrowed(t)),
            Err(_) => std::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1)),
        },
        Encoding::Gbk => decode_gbk(raw),
    };
    match (first, fallback) {
        (Ok(t), _) => Ok(t),
        (Err(e), Some(f)) if f != enc => match f {
            Encoding::Utf8 => std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| e),
            Encoding::Gbk => decode_gbk(raw).map_err(|_| e),
        },
        (Err(e), _) => Err(e),
    }
}

fn decode_gbk(raw: &[u8]) -> Result<Cow<'_, str>, String> {
    if raw.is_ascii() {
        return Ok(Cow::Borrowed(
            std::str::from_utf8(raw).expect("invariant: ASCII is UTF-8"),
        ));
    }
    encoding_rs::GB18030
        .decode_without_bom_handling_and_without_replacement(raw)
        .ok_or_else(|| "invalid GBK/GB18030 bytes".to_string())
}

/// Per-column metadata from the lines under an E-file header (`//` description, `@/`
/// alias, `%` type, `$` unit, `:` limits). Empty for other formats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnMeta {
    pub description: Option<String>,
    pub alias: Option<String>,
    pub type_code: Option<String>,
    pub unit: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// The block a record came from (for delimited files: an empty block).
#[derive(Debug, Clone, Default)]
pub struct BlockInfo {
    pub class: String,
    pub entity: Option<String>,
    /// Tag attributes as written (`Date='2025-03-13'` gives `("Date", "2025-03-13")`).
    pub attrs: Vec<(String, String)>,
    /// The line of the opening tag.
    pub line: u64,
    pub meta: Vec<ColumnMeta>,
}

impl BlockInfo {
    /// A tag attribute, by case-insensitive name.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The block's time from its `Date=`/`Time=` attributes (`Time='17-05-00'` allowed).
    pub fn time(&self) -> Option<chrono::NaiveDateTime> {
        let date = self.attr("date")?;
        match self.attr("time") {
            Some(t) => parse_datetime(&format!("{date} {t}")),
            None => parse_datetime(date),
        }
    }
}

/// One record: its fields in the order of `names` (NULL as `None`).
pub struct Record<'a> {
    /// The (first) line it was read from, counting from 1.
    pub line: u64,
    /// The byte offset just after the line that completed it.
    pub end: u64,
    pub block: &'a BlockInfo,
    /// Column names from the header (empty when the file has none).
    pub names: &'a [String],
    /// Changes whenever `names` (or the block) may have changed, so a sink can cache
    /// how names map to its columns.
    pub schema: u64,
    /// For a transposed `@#` block: the object (column) name.
    pub object: Option<&'a str>,
    pub fields: &'a [Option<&'a str>],
    /// The raw text of the line, kept with a rejection.
    pub raw: &'a str,
}

/// Receives what a decoder reads.
pub trait Sink {
    fn record(&mut self, r: &Record<'_>);
    /// Bad content: a line that is not a row, a row that does not fit, an unclosed block.
    fn problem(&mut self, line: u64, end: u64, reason: String, raw: &[u8]);
    /// A block of a class the source does not read.
    fn skipped_block(&mut self) {}
}

/// A line-at-a-time decoder.
pub trait LineDecoder {
    /// Feeds one line (without its `\n`; a trailing `\r` is the decoder's to strip) that
    /// ends just before byte `end`.
    fn line(&mut self, raw: &[u8], end: u64, sink: &mut dyn Sink);
    /// The end of the file.
    fn finish(&mut self, end: u64, sink: &mut dyn Sink);
}

/// Null tokens, checked without comparing most fields: only a field as short as the
/// longest token and starting with a token's first byte is compared.
#[derive(Debug, Clone)]
pub struct NullTokens {
    tokens: Vec<String>,
    max_len: usize,
    first: [bool; 256],
}

impl NullTokens {
    pub fn new(tokens: &[String]) -> NullTokens {
        let mut first = [false; 256];
        for t in tokens {
            if let Some(&b) = t.as_bytes().first() {
                first[b as usize] = true;
            }
        }
        NullTokens {
            tokens: tokens.to_vec(),
            max_len: tokens.iter().map(String::len).max().unwrap_or(0),
            first,
        }
    }

    /// Whether `t` is empty or a null token.
    #[inline]
    pub fn is_null(&self, t: &str) -> bool {
        let b = t.as_bytes();
        match b.first() {
            None => true,
            Some(&c) => {
                b.len() <= self.max_len
                    && self.first[c as usize]
                    && self.tokens.iter().any(|n| n.as_bytes() == b)
            }
        }
    }
}

/// Trims blanks (spaces, TABs, CR) at both ends, checking the ends first.
#[inline]
pub fn trim_blanks(t: &str) -> &str {
    let b = t.as_bytes();
    let blank = |c: u8| c == b' ' || c == b'\t' || c == b'\r';
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) if blank(f) || blank(l) => t.trim_matches([' ', '\t', '\r']),
        _ => t,
    }
}

/// Reuses a vector's allocation for a shorter lifetime (in-place collect of an empty
/// vector keeps its capacity).
pub fn recycle<'b>(mut v: Vec<Option<&'_ str>>) -> Vec<Option<&'b str>> {
    v.clear();
    v.into_iter().map(|_| None).collect()
}

// ---------------------------------------------------------------------------------------
// Typed columns
// ---------------------------------------------------------------------------------------

/// What an `INCLUDE` column of a file source holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    FileName,
    FilePath,
    FileSize,
    Company,
    Subcompany,
    System,
    Suffix,
    /// Snapshot time from the file name (TIMESTAMPTZ).
    SnapshotTime,
    /// When the reader read the file (TIMESTAMPTZ).
    IngestTime,
    /// Ingest time minus snapshot time (INTERVAL).
    IngestLatency,
    NameOk,
    Line,
    Class,
    Entity,
    Object,
    /// The block's `Date=`/`Time=` (TIMESTAMPTZ).
    BlockTime,
    /// A tag attribute of the block, by name.
    BlockAttr(String),
    /// `$` unit of the named column.
    Unit(String),
    /// `:` lower limit of the named column.
    LimitMin(String),
    /// `:` upper limit of the named column.
    LimitMax(String),
}

impl Meta {
    /// `INCLUDE` kinds that hold one value per file (every format has them).
    pub const PER_FILE: &'static [&'static str] = &[
        "file_name",
        "file_path",
        "file_size",
        "company",
        "subcompany",
        "system",
        "suffix",
        "snapshot_time",
        "ingest_time",
        "ingest_latency",
        "name_ok",
    ];
    /// `INCLUDE` kinds that vary by row (E files; `||` files have `line`).
    pub const PER_ROW: &'static [&'static str] = &[
        "line",
        "class",
        "entity",
        "object",
        "block_time",
        "block_attr",
        "unit",
        "limit_min",
        "limit_max",
    ];

    pub fn from_include(kind: &str, arg: Option<&str>) -> Result<Meta, String> {
        let need = |what: &str| {
            arg.map(str::to_string).ok_or_else(|| {
                format!("INCLUDE {kind} needs the {what}: INCLUDE {kind} 'name' AS column")
            })
        };
        Ok(match kind {
            "file_name" => Meta::FileName,
            "file_path" => Meta::FilePath,
            "file_size" => Meta::FileSize,
            "company" => Meta::Company,
            "subcompany" => Meta::Subcompany,
            "system" => Meta::System,
            "suffix" => Meta::Suffix,
            "snapshot_time" => Meta::SnapshotTime,
            "ingest_time" => Meta::IngestTime,
            "ingest_latency" => Meta::IngestLatency,
            "name_ok" => Meta::NameOk,
            "line" => Meta::Line,
            "class" => Meta::Class,
            "entity" => Meta::Entity,
            "object" => Meta::Object,
            "block_time" => Meta::BlockTime,
            "block_attr" => Meta::BlockAttr(need("attribute name")?),
            "unit" => Meta::Unit(need("column name")?),
            "limit_min" => Meta::LimitMin(need("column name")?),
            "limit_max" => Meta::LimitMax(need("column name")?),
            other => {
                return Err(format!(
                    "connector posix_fs cannot INCLUDE {other} (it includes {}, {})",
                    Meta::PER_FILE.join(", "),
                    Meta::PER_ROW.join(", ")
                ))
            }
        })
    }
}

/// What is known about the file being read, for `INCLUDE` columns.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct FileFacts {
    pub name: String,
    pub path: String,
    pub size: i64,
    pub company: Option<String>,
    pub subcompany: Option<String>,
    pub system: Option<String>,
    pub suffix: Option<String>,
    /// Microseconds since the epoch.
    pub snapshot: Option<i64>,
    pub ingest: i64,
    pub name_ok: bool,
    /// The ledger's identity of the file (size and modification time).
    pub stamp: i64,
}

enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Date(Date32Builder),
    /// With the offset (seconds) a local time is at; `None` for TIMESTAMP (wall clock).
    Ts(TimestampMicrosecondBuilder, Option<i32>),
    Dec(Decimal128Builder, u8, i8),
    Interval(IntervalMonthDayNanoBuilder),
}

/// A parsed field, kept until the whole row parsed (so a bad field drops the row, not
/// half of it).
#[derive(Clone, Copy)]
enum Val {
    Null,
    Bool(bool),
    Int(i64),
    F64(f64),
    /// Text: the field itself.
    Text,
    Micros(i64),
    Days(i32),
    Dec(i128),
}

enum Source {
    /// A data (non-INCLUDE) column (`data_cols` maps them in order).
    Data,
    Meta(Meta),
}

struct Column {
    name: String,
    source: Source,
    builder: Builder,
}

/// How the fields of one header map to the data columns.
struct Binding {
    schema: u64,
    /// Data column -> field index.
    fields: Result<Vec<usize>, String>,
    /// Column name (as written in INCLUDE) -> field index, for units and limits.
    meta_fields: Vec<Option<usize>>,
}

/// Turns records into Arrow batches of the source's visible columns.
pub struct RowBuilder {
    schema: SchemaRef,
    columns: Vec<Column>,
    data_names: Vec<String>,
    /// Data column -> index in `columns`.
    data_cols: Vec<usize>,
    /// Whether any column is an `INCLUDE` column.
    has_meta: bool,
    binding: Option<Binding>,
    vals: Vec<Val>,
    rows: usize,
    /// The offset local times in the file are at.
    tz: i32,
    pub facts: FileFacts,
}

impl RowBuilder {
    pub fn new(def: &TableDef, tz: i32) -> Result<RowBuilder, String> {
        let c = def.connector.as_ref().ok_or("no connector")?;
        let mut columns = Vec::new();
        let mut data_names = Vec::new();
        let mut data_cols = Vec::new();
        for (i, col) in def.visible_columns() {
            let source = match c.includes.iter().find(|inc| inc.column == i) {
                Some(inc) => Source::Meta(Meta::from_include(&inc.kind, inc.argument.as_deref())?),
                None => {
                    data_names.push(col.name.clone());
                    data_cols.push(columns.len());
                    Source::Data
                }
            };
            let builder = match col.ty.to_arrow() {
                DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
                DataType::Int16 => Builder::I16(Int16Builder::new()),
                DataType::Int32 => Builder::I32(Int32Builder::new()),
                DataType::Int64 => Builder::I64(Int64Builder::new()),
                DataType::Float32 => Builder::F32(Float32Builder::new()),
                DataType::Float64 => Builder::F64(Float64Builder::new()),
                DataType::Utf8 => Builder::Str(StringBuilder::new()),
                DataType::Date32 => Builder::Date(Date32Builder::new()),
                DataType::Timestamp(_, tzname) => Builder::Ts(
                    TimestampMicrosecondBuilder::new().with_timezone_opt(tzname.clone()),
                    tzname.map(|_| tz),
                ),
                DataType::Decimal128(p, s) => Builder::Dec(
                    Decimal128Builder::new()
                        .with_precision_and_scale(p, s)
                        .map_err(|e| e.to_string())?,
                    p,
                    s,
                ),
                DataType::Interval(_) if matches!(source, Source::Meta(_)) => {
                    Builder::Interval(IntervalMonthDayNanoBuilder::new())
                }
                _ => {
                    return Err(format!(
                        "column \"{}\": a file source cannot read type {}",
                        col.name,
                        col.ty.pg_name()
                    ))
                }
            };
            columns.push(Column {
                name: col.name.clone(),
                source,
                builder,
            });
        }
        let has_meta = data_cols.len() < columns.len();
        Ok(RowBuilder {
            schema: crate::generated::schema(def),
            columns,
            vals: vec![Val::Null; data_names.len()],
            has_meta,
            data_names,
            data_cols,
            binding: None,
            rows: 0,
            tz,
            facts: FileFacts::default(),
        })
    }

    /// The data (non-INCLUDE) column names, in order.
    pub fn data_names(&self) -> &[String] {
        &self.data_names
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn bind(&self, r: &Record<'_>) -> Binding {
        let norm = |s: &str| s.trim().to_lowercase();
        let find = |name: &str| -> Option<usize> {
            let n = norm(name);
            r.names.iter().position(|h| norm(h) == n).or_else(|| {
                r.block.meta.iter().position(|m| {
                    m.description.as_deref().map(norm).as_deref() == Some(&n)
                        || m.alias.as_deref().map(norm).as_deref() == Some(&n)
                })
            })
        };
        let width = r.fields.len();
        let by_name: Option<Vec<usize>> = if r.names.is_empty() {
            None
        } else {
            self.data_names.iter().map(|n| find(n)).collect()
        };
        let n = self.data_names.len();
        let fields = match by_name {
            Some(f) => Ok(f),
            // No header: by position (each row's width is checked in `push`).
            None if r.names.is_empty() || width == n => Ok((0..n).collect()),
            None => Err(format!(
                "the header ({}) does not name the source's columns ({}) and has {} fields, not {}: declare the columns in the header's order or with the header's names",
                r.names.join(", "),
                self.data_names.join(", "),
                width,
                n
            )),
        };
        let meta_fields = self
            .columns
            .iter()
            .map(|c| match &c.source {
                Source::Meta(Meta::Unit(n) | Meta::LimitMin(n) | Meta::LimitMax(n)) => {
                    match (
                        self.data_names
                            .iter()
                            .position(|d| d.eq_ignore_ascii_case(n)),
                        &fields,
                    ) {
                        (Some(d), Ok(f)) => Some(f[d]),
                        _ => find(n),
                    }
                }
                _ => None,
            })
            .collect();
        Binding {
            schema: r.schema,
            fields,
            meta_fields,
        }
    }

    /// Appends a record, or says why it cannot be a row (nothing is appended then).
    pub fn push(&mut self, r: &Record<'_>) -> Result<(), String> {
        if self.binding.as_ref().map(|b| b.schema) != Some(r.schema) {
            self.binding = Some(self.bind(r));
        }
        let binding = self.binding.as_ref().expect("invariant: bound above");
        let fields = binding.fields.as_ref().map_err(Clone::clone)?;
        if r.names.is_empty() && r.fields.len() != self.data_names.len() {
            return Err(format!(
                "{} fields, but the source has {} columns",
                r.fields.len(),
                self.data_names.len()
            ));
        }
        // Parse every data field first (text needs no parsing), so a bad field leaves
        // no column appended to.
        for (d, (&fi, &ci)) in fields.iter().zip(&self.data_cols).enumerate() {
            let builder = &self.columns[ci].builder;
            if matches!(builder, Builder::Str(_)) {
                continue;
            }
            self.vals[d] = match r.fields.get(fi).copied().flatten() {
                None => Val::Null,
                Some(t) => match parse_field(builder, t) {
                    Some(v) => v,
                    None => {
                        let col = &self.columns[ci];
                        return Err(format!(
                            "column \"{}\": '{}' is not a valid {}",
                            col.name,
                            cut(t, 64),
                            type_name(&col.builder)
                        ));
                    }
                },
            };
        }
        for (d, (&fi, &ci)) in fields.iter().zip(&self.data_cols).enumerate() {
            let text = r.fields.get(fi).copied().flatten();
            match &mut self.columns[ci].builder {
                Builder::Str(b) => match text {
                    Some(t) => b.append_value(t),
                    None => b.append_null(),
                },
                other => append(other, self.vals[d], ""),
            }
        }
        if self.has_meta {
            let (tz, facts) = (self.tz, &self.facts);
            for (ci, col) in self.columns.iter_mut().enumerate() {
                if let Source::Meta(m) = &col.source {
                    let field = binding.meta_fields[ci];
                    append_meta(&mut col.builder, m, r, facts, field, tz);
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows so far as a batch (the builders start over).
    pub fn finish(&mut self) -> Result<RecordBatch, String> {
        // The next batch is likely the same size: its builders start at this one's
        // capacity instead of growing (and copying) from empty.
        let n = self.rows;
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| -> ArrayRef {
                match &mut c.builder {
                    Builder::Bool(b) => Arc::new(b.finish()),
                    Builder::I16(b) => Arc::new(b.finish()),
                    Builder::I32(b) => Arc::new(b.finish()),
                    Builder::I64(b) => {
                        let a = b.finish();
                        *b = Int64Builder::with_capacity(n);
                        Arc::new(a)
                    }
                    Builder::F32(b) => Arc::new(b.finish()),
                    Builder::F64(b) => {
                        let a = b.finish();
                        *b = Float64Builder::with_capacity(n);
                        Arc::new(a)
                    }
                    Builder::Str(b) => {
                        let a = b.finish();
                        *b = StringBuilder::with_capacity(n, a.value_data().len());
                        Arc::new(a)
                    }
                    Builder::Date(b) => Arc::new(b.finish()),
                    Builder::Ts(b, _) => {
                        let a = b.finish();
                        *b = TimestampMicrosecondBuilder::with_capacity(n)
                            .with_timezone_opt(a.timezone().map(Arc::from));
                        Arc::new(a)
                    }
                    Builder::Dec(b, _, _) => Arc::new(b.finish()),
                    Builder::Interval(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| e.to_string())
    }
}

fn cut(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn type_name(b: &Builder) -> &'static str {
    match b {
        Builder::Bool(_) => "boolean",
        Builder::I16(_) => "smallint",
        Builder::I32(_) => "integer",
        Builder::I64(_) => "bigint",
        Builder::F32(_) => "real",
        Builder::F64(_) => "double precision",
        Builder::Str(_) => "text",
        Builder::Date(_) => "date",
        Builder::Ts(_, None) => "timestamp",
        Builder::Ts(_, Some(_)) => "timestamptz",
        Builder::Dec(..) => "numeric",
        Builder::Interval(_) => "interval",
    }
}

fn parse_field(b: &Builder, t: &str) -> Option<Val> {
    let t = trim_blanks(t);
    Some(match b {
        Builder::Bool(_) => Val::Bool(match t.to_ascii_lowercase().as_str() {
            "t" | "true" | "1" | "y" | "yes" | "on" => true,
            "f" | "false" | "0" | "n" | "no" | "off" => false,
            _ => return None,
        }),
        Builder::I16(_) => Val::Int(Int16Type::parse(t)? as i64),
        Builder::I32(_) => Val::Int(Int32Type::parse(t)? as i64),
        Builder::I64(_) => Val::Int(Int64Type::parse(t)?),
        Builder::F32(_) => Val::F64(Float32Type::parse(t)? as f64),
        Builder::F64(_) => Val::F64(Float64Type::parse(t)?),
        Builder::Str(_) => Val::Text,
        Builder::Date(_) => {
            let (y, m, d, _) = parse_parts(t)?;
            Val::Days(days_from_civil(y, m, d) as i32)
        }
        Builder::Ts(_, tz) => {
            Val::Micros(parse_datetime_micros(t)? - tz.unwrap_or(0) as i64 * 1_000_000)
        }
        Builder::Dec(_, p, s) => Val::Dec(parse_decimal::<Decimal128Type>(t, *p, *s).ok()?),
        Builder::Interval(_) => return None,
    })
}

fn append(b: &mut Builder, v: Val, text: &str) {
    match (b, v) {
        (Builder::Bool(b), Val::Bool(x)) => b.append_value(x),
        (Builder::I16(b), Val::Int(x)) => b.append_value(x as i16),
        (Builder::I32(b), Val::Int(x)) => b.append_value(x as i32),
        (Builder::I64(b), Val::Int(x)) => b.append_value(x),
        (Builder::F32(b), Val::F64(x)) => b.append_value(x as f32),
        (Builder::F64(b), Val::F64(x)) => b.append_value(x),
        (Builder::Str(b), Val::Text) => b.append_value(text),
        (Builder::Date(b), Val::Days(x)) => b.append_value(x),
        (Builder::Ts(b, _), Val::Micros(x)) => b.append_value(x),
        (Builder::Dec(b, _, _), Val::Dec(x)) => b.append_value(x),
        (b, _) => append_null(b),
    }
}

fn append_null(b: &mut Builder) {
    match b {
        Builder::Bool(b) => b.append_null(),
        Builder::I16(b) => b.append_null(),
        Builder::I32(b) => b.append_null(),
        Builder::I64(b) => b.append_null(),
        Builder::F32(b) => b.append_null(),
        Builder::F64(b) => b.append_null(),
        Builder::Str(b) => b.append_null(),
        Builder::Date(b) => b.append_null(),
        Builder::Ts(b, _) => b.append_null(),
        Builder::Dec(b, _, _) => b.append_null(),
        Builder::Interval(b) => b.append_null(),
    }
}

fn append_str(b: &mut Builder, v: Option<&str>) {
    match (b, v) {
        (Builder::Str(b), Some(s)) => b.append_value(s),
        (b, _) => append_null(b),
    }
}

fn append_meta(
    b: &mut Builder,
    m: &Meta,
    r: &Record<'_>,
    f: &FileFacts,
    field: Option<usize>,
    tz: i32,
) {
    match m {
        Meta::FileName => append_str(b, Some(&f.name)),
        Meta::FilePath => append_str(b, Some(&f.path)),
        Meta::Company => append_str(b, f.company.as_deref()),
        Meta::Subcompany => append_str(b, f.subcompany.as_deref()),
        Meta::System => append_str(b, f.system.as_deref()),
        Meta::Suffix => append_str(b, f.suffix.as_deref()),
        Meta::Class => append_str(b, (!r.block.class.is_empty()).then_some(&*r.block.class)),
        Meta::Entity => append_str(b, r.block.entity.as_deref()),
        Meta::Object => append_str(b, r.object),
        Meta::BlockAttr(k) => append_str(b, r.block.attr(k)),
        Meta::Unit(_) => append_str(b, field.and_then(|i| r.block.meta.get(i)?.unit.as_deref())),
        Meta::FileSize | Meta::Line => match b {
            Builder::I64(b) => b.append_value(if *m == Meta::Line {
                r.line as i64
            } else {
                f.size
            }),
            b => append_null(b),
        },
        Meta::NameOk => match b {
            Builder::Bool(b) => b.append_value(f.name_ok),
            b => append_null(b),
        },
        Meta::LimitMin(_) | Meta::LimitMax(_) => {
            let meta = field.and_then(|i| r.block.meta.get(i));
            let v = meta.and_then(|x| {
                if matches!(m, Meta::LimitMin(_)) {
                    x.min
                } else {
                    x.max
                }
            });
            match (b, v) {
                (Builder::F64(b), Some(v)) => b.append_value(v),
                (b, _) => append_null(b),
            }
        }
        Meta::SnapshotTime | Meta::IngestTime | Meta::BlockTime => {
            let v = match m {
                Meta::SnapshotTime => f.snapshot,
                Meta::IngestTime => Some(f.ingest),
                _ => r.block.time().map(|t| local_micros(t, tz)),
            };
            match (b, v) {
                (Builder::Ts(b, _), Some(v)) => b.append_value(v),
                (b, _) => append_null(b),
            }
        }
        Meta::IngestLatency => match (b, f.snapshot) {
            (Builder::Interval(b), Some(s)) => {
                b.append_value(IntervalMonthDayNano::new(0, 0, (f.ingest - s) * 1000))
            }
            (b, _) => append_null(b),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> Option<String> {
        parse_datetime(s).map(|t| t.format("%Y-%m-%d %H:%M:%S%.f").to_string())
    }

    #[test]
    fn grid_time_forms_parse() {
        assert_eq!(dt("2025-03-13 17:05:00").unwrap(), "2025-03-13 17:05:00");
        assert_eq!(dt("2019-11-5 11:25").unwrap(), "2019-11-05 11:25:00");
        assert_eq!(dt("2016/10/20_16:06:26").unwrap(), "2016-10-20 16:06:26");
        assert_eq!(dt("20120423 13:34:20").unwrap(), "2012-04-23 13:34:20");
        assert_eq!(dt("20250313170500").unwrap(), "2025-03-13 17:05:00");
        assert_eq!(dt("2022-07-21 03-15-00").unwrap(), "2022-07-21 03:15:00");
        assert_eq!(dt("2011-11-03 00:00:02.0").unwrap(), "2011-11-03 00:00:02");
        assert_eq!(
            dt("2011-11-03T00:00:02.123456").unwrap(),
            "2011-11-03 00:00:02.123456"
        );
        assert_eq!(dt("2025-03-13").unwrap(), "2025-03-13 00:00:00");
        for bad in [
            "2025-13-01 00:00:00",
            "2025-02-30",
            "2025-03-13 24:00:00",
            "2025-03-13 17:60",
            "2025-03-13x",
            "",
            "17:05:00",
            "2025-03/13",
        ] {
            assert_eq!(dt(bad), None, "{bad}");
        }
        // A compact date alone is midnight.
        assert_eq!(dt("20250313").unwrap(), "2025-03-13 00:00:00");
        assert_eq!(parse_timezone("+1中"), None);
    }

    #[test]
    fn the_fast_path_agrees_with_the_calendar() {
        for s in [
            "2025-03-13 17:05:00",
            "1969-12-31 23:59:59.999999",
            "2000-02-29 12:00",
            "1900-03-01",
            "2400-02-29 00:00:01",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59",
            "2019-11-5 11:25",
        ] {
            let want = parse_datetime(s).unwrap().and_utc().timestamp_micros();
            assert_eq!(parse_datetime_micros(s), Some(want), "{s}");
        }
        for bad in [
            "1900-02-29",
            "2023-02-29",
            "2025-04-31",
            "2025-00-10",
            "2025-01-00",
        ] {
            assert_eq!(parse_datetime_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_timezone("Asia/Shanghai"), Some(28800));
        assert_eq!(parse_timezone("UTC"), Some(0));
        assert_eq!(parse_timezone("+05:30"), Some(19800));
        assert_eq!(parse_timezone("UTC-3"), Some(-10800));
        assert_eq!(parse_timezone("Europe/Nowhere"), None);
        assert_eq!(parse_timezone("+99"), None);
    }

    #[test]
    fn gbk_lines_decode_and_bad_bytes_are_named() {
        let (gbk, _, _) = encoding_rs::GBK.encode("测点 ok");
        assert!(decode_line(&gbk, Encoding::Utf8, None).is_err());
        assert_eq!(decode_line(&gbk, Encoding::Gbk, None).unwrap(), "测点 ok");
        assert_eq!(
            decode_line(&gbk, Encoding::Utf8, Some(Encoding::Gbk)).unwrap(),
            "测点 ok"
        );
        let e = decode_line(b"ab\xffc", Encoding::Utf8, None).unwrap_err();
        assert!(e.contains("byte 3"), "{e}");
    }
}
