//! `ENCODE E_FILE`: the dispatch E language (E语言, CIM/E), read line by line.
//!
//! ```text
//! <!System=OMS  Version=1.0  Code=UTF-8!>          declaration (optional)
//! <YC::江苏.苏州 Date='2025-03-13' Time='17-05-00'>  block: class, entity, attributes
//! @  序号  测点ID  值                              header (`@` horizontal)
//! //  seq  point_id  value                          description line (right after `@`)
//! %  i  s  f   /  $  -  -  MW   /  :  -  -  0:500    type, unit and limit lines
//! #  1  1168122  132.56                            data rows
//! </YC::江苏.苏州>
//! ```
//!
//! The grammar and the decisions taken where files differ are in
//! `docs/connectors.md` ("E files"); in short:
//! - A line's meaning is its marker, after leading blanks: `//`, `<!`, `</`, `<`, `@@`,
//!   `@#`, `@/`, `/@`, `@`, `%`, `$`, `:`, `#`, `*`, and the wrapped forms `<@>`, `<@@>`,
//!   `<@#>`, `<#>…</#>`. The marker may be glued to the first field (`#1`, `@顺序`).
//! - Fields are split per line: a line holding a TAB is in TAB mode (one TAB separates,
//!   two adjacent TABs hold an empty field, a TAB right after the marker is the marker's),
//!   otherwise runs of blanks separate. `separator = 'tab' | 'whitespace'` forces a mode.
//! - A field starting with `'` or `"` runs to the matching quote that ends the field (no
//!   escapes exist); a quoted field is never NULL. A bare field in `null_tokens` (default
//!   `-`, `NULL`) or an empty field is NULL. A `//` that starts a field ends the line.
//! - `@` rows are records; `@@` blocks hold `(name, value)` rows and a repeated name starts
//!   the next object; `@#` blocks are transposed (one record per object column, emitted at
//!   the block's end). A self-closing tag `<C::E a=1 b='x y' />` is one record of its
//!   attributes. FREE blocks are skipped unread.
//! - A source binds to the blocks whose class matches `block` (a `*`/`?` pattern, or
//!   `Class::Entity`); other blocks are counted and skipped.
//!
//! Nothing is kept per file but the open blocks: horizontal rows are handed out as they
//! are read; a `@@` object or a `@#` block is held until complete, within
//! [`MAX_HELD_BYTES`].

mod lex;

pub use lex::parse_attrs;
use lex::{closing_quote, comment_start, is_comment, parse_tag, strip_closer};

use crate::posix_fs::glob_match;
use crate::text_rows::{
    decode_line, recycle, trim_blanks, BlockInfo, ColumnMeta, Encoding, LineDecoder, NullTokens,
    Record, Sink,
};

/// The most a `@@` object or a `@#` block may hold before it is reported and dropped.
pub const MAX_HELD_BYTES: usize = 64 << 20;
/// What holding one field costs beyond its text (the `String` and `Option`, and the
/// allocation), counted against [`MAX_HELD_BYTES`].
const HELD_OVERHEAD: usize = 48;
/// Nested blocks deeper than this are reported and not opened.
const MAX_DEPTH: usize = 32;
/// Names a numbering column goes by (`@# 顺序 属性名 obj…` has one before the names).
const SEQ_NAMES: &[&str] = &["顺序", "序号", "num", "no", "seq", "编号"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    Auto,
    Tab,
    Whitespace,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The classes read: a `*`/`?` pattern over the class name, or over `Class::Entity`
    /// when it holds `::`.
    pub block: String,
    pub separator: Separator,
    pub null_tokens: Vec<String>,
    /// `None`: UTF-8 unless the declaration says `Code=GBK`.
    pub encoding: Option<Encoding>,
    /// Decodes a line that is invalid in the file's encoding.
    pub fallback: Option<Encoding>,
    pub trailing_comments: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            block: "*".into(),
            separator: Separator::Auto,
            null_tokens: vec!["-".into(), "NULL".into()],
            encoding: None,
            fallback: None,
            trailing_comments: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Horizontal,
    Single,
    Multi,
}

struct Block {
    info: BlockInfo,
    bound: bool,
    layout: Option<Layout>,
    names: Vec<String>,
    /// The last significant line was the header (a `//` line now describes columns).
    after_header: bool,
    rows: u64,
    /// `@@`: the object being read, its names, the line it started, and the names of
    /// the last object handed out.
    object: Vec<(String, Option<String>)>,
    object_keys: std::collections::HashSet<String>,
    object_line: u64,
    object_names: Vec<String>,
    held: usize,
    /// `@#`: fields before the attribute name, object names, attribute names, and each
    /// object's values.
    multi_skip: usize,
    objects: Vec<String>,
    attrs: Vec<String>,
    values: Vec<Vec<Option<String>>>,
    multi_line: u64,
}

/// The E-file decoder of one file.
pub struct Parser {
    opts: Options,
    nulls: NullTokens,
    /// Finds `//` in a line.
    slashes: memchr::memmem::Finder<'static>,
    encoding: Encoding,
    /// The declaration's attributes (keys as written).
    pub declaration: Vec<(String, String)>,
    stack: Vec<Block>,
    /// The class of the FREE block being skipped.
    free: Option<(String, u64)>,
    schema: u64,
    line_no: u64,
    end: u64,
    scratch: Vec<Option<&'static str>>,
}

impl Parser {
    pub fn new(opts: Options) -> Parser {
        Parser {
            encoding: opts.encoding.unwrap_or(Encoding::Utf8),
            nulls: NullTokens::new(&opts.null_tokens),
            slashes: memchr::memmem::Finder::new(b"//").into_owned(),
            opts,
            declaration: Vec::new(),
            stack: Vec::new(),
            free: None,
            schema: 0,
            line_no: 0,
            end: 0,
            scratch: Vec::new(),
        }
    }

    fn is_null(&self, t: &str) -> bool {
        self.nulls.is_null(t)
    }

    /// Splits the text after a marker into fields (see the module docs).
    fn split<'a>(&self, rest: &'a str, nulls: bool, out: &mut Vec<Option<&'a str>>) {
        out.clear();
        let rest = rest.trim_end_matches([' ', '\r']);
        let tab = match self.opts.separator {
            Separator::Tab => true,
            Separator::Whitespace => false,
            Separator::Auto => memchr::memchr(b'\t', rest.as_bytes()).is_some(),
        };
        let b = rest.as_bytes();
        let len = b.len();
        let mut i = 0;
        if tab {
            if rest.trim().is_empty() {
                return;
            }
            if b[0] == b'\t' {
                i = 1;
            }
            // The TABs of the line in one SIMD pass; comments are looked for in fields
            // only if the line holds a `//` at all.
            let comments = self.opts.trailing_comments && self.slashes.find(&b[i..]).is_some();
            let mut tabs = memchr::memchr_iter(b'\t', &b[i..]).map(|p| p + i);
            let mut start = i;
            loop {
                let next = tabs.next();
                let k = next.unwrap_or(len);
                // A field runs from `start` to `k` (it cannot hold a TAB).
                let raw = trim_blanks(&rest[start..k]);
                let rb = raw.as_bytes();
                if comments && is_comment(rb) {
                    return;
                }
                let quoted = !rb.is_empty() && (rb[0] == b'\'' || rb[0] == b'"');
                let field = if quoted {
                    // Quotes are stripped; an unterminated one runs to the TAB. A
                    // comment may follow the closing quote.
                    let q = rb[0] as char;
                    let inner = &raw[1..];
                    match inner.strip_suffix(q) {
                        Some(f) => f,
                        None => {
                            let after_quote = inner.find(q).filter(|&p| {
                                comments && is_comment(inner[p + 1..].trim_start().as_bytes())
                            });
                            if let Some(p) = after_quote {
                                out.push(Some(&inner[..p]));
                                return;
                            }
                            inner
                        }
                    }
                } else if comments {
                    if let Some(p) = comment_start(raw) {
                        let f = raw[..p].trim_end_matches(' ');
                        out.push(if nulls && self.is_null(f) {
                            None
                        } else {
                            Some(f)
                        });
                        return;
                    }
                    raw
                } else {
                    raw
                };
                out.push(if !quoted && nulls && self.is_null(field) {
                    None
                } else {
                    Some(field)
                });
                if next.is_none() {
                    return;
                }
                start = k + 1;
                if start == len {
                    // A trailing TAB: one more, empty, field.
                    out.push(if nulls { None } else { Some("") });
                    return;
                }
            }
        } else {
            loop {
                while i < len && (b[i] == b' ' || b[i] == b'\t') {
                    i += 1;
                }
                if i == len {
                    return;
                }
                if self.opts.trailing_comments && is_comment(&b[i..]) {
                    return;
                }
                if b[i] == b'\'' || b[i] == b'"' {
                    match closing_quote(b, i, |c| c == b' ' || c == b'\t') {
                        Some(q) => {
                            out.push(Some(&rest[i + 1..q]));
                            i = q + 1;
                        }
                        None => {
                            out.push(Some(&rest[i + 1..]));
                            return;
                        }
                    }
                } else {
                    let start = i;
                    while i < len && b[i] != b' ' && b[i] != b'\t' {
                        i += 1;
                    }
                    let f = &rest[start..i];
                    out.push(if nulls && self.is_null(f) {
                        None
                    } else {
                        Some(f)
                    });
                }
            }
        }
    }

    fn line_text(&mut self, text: &str, raw: &[u8], sink: &mut dyn Sink) {
        let n = self.line_no;
        let s = text.trim_start_matches([' ', '\t']);
        if s.is_empty() {
            return;
        }
        let b = s.as_bytes();
        match b[0] {
            b'/' if b.starts_with(b"//") => self.comment(&s[2..]),
            b'/' if b.starts_with(b"/@") => self.meta_line(b"@/", &s[2..], raw, sink),
            b'<' => {
                if b.starts_with(b"<!") {
                    self.declaration_line(s, raw, sink)
                } else if b.starts_with(b"</") {
                    self.close(&s[2..], raw, sink)
                } else if let Some(r) = s.strip_prefix("<@@>") {
                    self.header(Layout::Single, strip_closer(r, "</@@>"), raw, sink)
                } else if let Some(r) = s.strip_prefix("<@#>") {
                    self.header(Layout::Multi, strip_closer(r, "</@#>"), raw, sink)
                } else if let Some(r) = s.strip_prefix("<@>") {
                    self.header(Layout::Horizontal, strip_closer(r, "</@>"), raw, sink)
                } else if let Some(r) = s.strip_prefix("<#>") {
                    self.data(strip_closer(r, "</#>"), raw, sink)
                } else {
                    self.open(&s[1..], raw, sink)
                }
            }
            b'@' => match b.get(1) {
                Some(b'@') => self.header(Layout::Single, &s[2..], raw, sink),
                Some(b'#') => self.header(Layout::Multi, &s[2..], raw, sink),
                Some(b'/') => self.meta_line(b"@/", &s[2..], raw, sink),
                _ => self.header(Layout::Horizontal, &s[1..], raw, sink),
            },
            b'%' | b'$' | b':' => self.meta_line(&b[..1], &s[1..], raw, sink),
            b'#' => self.data(&s[1..], raw, sink),
            // A pointer row belongs to the object before it; it is not a record.
            b'*' => {}
            _ => {
                if self.stack.last().is_none_or(|blk| blk.bound) {
                    sink.problem(
                        n,
                        self.end,
                        format!("line {n}: not an E-file line (no marker such as #, @ or <)"),
                        raw,
                    );
                }
            }
        }
    }

    fn comment(&mut self, rest: &str) {
        let Some(blk) = self.stack.last() else { return };
        if !(blk.bound && blk.after_header && blk.layout == Some(Layout::Horizontal)) {
            return;
        }
        let mut v = recycle(std::mem::take(&mut self.scratch));
        self.split(rest, false, &mut v);
        let blk = self.stack.last_mut().expect("invariant: checked above");
        blk.after_header = false;
        if v.len() == blk.names.len() {
            for (m, d) in blk.info.meta.iter_mut().zip(&v) {
                m.description = d.map(str::to_string);
            }
            self.schema += 1;
        }
        self.scratch = recycle(v);
    }

    fn declaration_line(&mut self, s: &str, raw: &[u8], sink: &mut dyn Sink) {
        let inner = &s[2..];
        let inner = match inner.find("!>") {
            Some(p) => &inner[..p],
            None => {
                let n = self.line_no;
                sink.problem(
                    n,
                    self.end,
                    format!("line {n}: declaration without !>"),
                    raw,
                );
                inner
            }
        };
        self.declaration = parse_attrs(inner);
        if self.opts.encoding.is_none() {
            if let Some((_, code)) = self
                .declaration
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("code"))
            {
                if let Some(e) = Encoding::parse(code) {
                    self.encoding = e;
                }
            }
        }
    }

    fn open(&mut self, s: &str, raw: &[u8], sink: &mut dyn Sink) {
        let n = self.line_no;
        let Some(tag) = parse_tag(s) else {
            sink.problem(n, self.end, format!("line {n}: malformed tag"), raw);
            return;
        };
        if tag.free {
            self.free = Some((tag.class, n));
            sink.skipped_block();
            return;
        }
        let bound = self.binds(&tag.class, tag.entity.as_deref());
        let info = BlockInfo {
            class: tag.class,
            entity: tag.entity,
            attrs: tag.attrs,
            line: n,
            meta: Vec::new(),
        };
        if tag.self_closing {
            if !bound {
                sink.skipped_block();
                return;
            }
            // One object: its attributes are its fields.
            self.schema += 1;
            let names: Vec<String> = info.attrs.iter().map(|(k, _)| k.clone()).collect();
            let fields: Vec<Option<&str>> =
                info.attrs.iter().map(|(_, v)| Some(v.as_str())).collect();
            let raw_text = String::from_utf8_lossy(raw);
            sink.record(&Record {
                line: n,
                end: self.end,
                block: &info,
                names: &names,
                schema: self.schema,
                object: None,
                fields: &fields,
                raw: &raw_text,
            });
            return;
        }
        if self.stack.len() >= MAX_DEPTH {
            sink.problem(
                n,
                self.end,
                format!("line {n}: blocks nested deeper than {MAX_DEPTH}"),
                raw,
            );
            return;
        }
        if !bound {
            sink.skipped_block();
        }
        self.stack.push(Block {
            info,
            bound,
            layout: None,
            names: Vec::new(),
            after_header: false,
            rows: 0,
            object: Vec::new(),
            object_keys: Default::default(),
            object_line: 0,
            object_names: Vec::new(),
            held: 0,
            multi_skip: 0,
            objects: Vec::new(),
            attrs: Vec::new(),
            values: Vec::new(),
            multi_line: 0,
        });
    }

    fn binds(&self, class: &str, entity: Option<&str>) -> bool {
        let p = &self.opts.block;
        if p.contains("::") {
            glob_match(p, &format!("{class}::{}", entity.unwrap_or("")))
        } else {
            glob_match(p, class)
        }
    }

    fn close(&mut self, s: &str, raw: &[u8], sink: &mut dyn Sink) {
        let n = self.line_no;
        let name = s
            .trim_start()
            .split(|c: char| c == '>' || c == ':' || c.is_whitespace())
            .next()
            .unwrap_or("");
        let Some(blk) = self.stack.last() else {
            sink.problem(
                n,
                self.end,
                format!("line {n}: </{name}> closes no open block"),
                raw,
            );
            return;
        };
        if blk.info.class != name {
            let (class, line) = (blk.info.class.clone(), blk.info.line);
            sink.problem(
                n,
                self.end,
                format!("line {n}: </{name}> closes block <{class}> opened at line {line}"),
                raw,
            );
        }
        self.end_block(sink);
    }

    /// Hands out what the innermost block holds, and closes it.
    fn end_block(&mut self, sink: &mut dyn Sink) {
        if let Some(mut blk) = self.stack.pop() {
            self.flush(&mut blk, sink);
        }
        // The enclosing block's rows come next: their names are its own again.
        self.schema += 1;
    }

    /// Hands out the records a `@@` or `@#` block holds.
    fn flush(&mut self, blk: &mut Block, sink: &mut dyn Sink) {
        if !blk.bound {
            return;
        }
        match blk.layout {
            Some(Layout::Single) => self.emit_object(blk, sink),
            Some(Layout::Multi) => {
                self.schema += 1;
                let names = std::mem::take(&mut blk.attrs);
                let values = std::mem::take(&mut blk.values);
                blk.held = 0;
                for (obj, vals) in blk.objects.iter().zip(&values) {
                    let fields: Vec<Option<&str>> = vals.iter().map(|v| v.as_deref()).collect();
                    sink.record(&Record {
                        line: blk.multi_line,
                        end: self.end,
                        block: &blk.info,
                        names: &names,
                        schema: self.schema,
                        object: Some(obj),
                        fields: &fields,
                        raw: "",
                    });
                }
            }
            _ => {}
        }
    }

    fn emit_object(&mut self, blk: &mut Block, sink: &mut dyn Sink) {
        if blk.object.is_empty() {
            return;
        }
        let object = std::mem::take(&mut blk.object);
        blk.object_keys.clear();
        blk.held = 0;
        let names: Vec<String> = object.iter().map(|(k, _)| k.clone()).collect();
        if names != blk.object_names {
            self.schema += 1;
            blk.object_names = names;
        }
        let fields: Vec<Option<&str>> = object.iter().map(|(_, v)| v.as_deref()).collect();
        sink.record(&Record {
            line: blk.object_line,
            end: self.end,
            block: &blk.info,
            names: &blk.object_names,
            schema: self.schema,
            object: None,
            fields: &fields,
            raw: "",
        });
    }

    fn header(&mut self, layout: Layout, rest: &str, raw: &[u8], sink: &mut dyn Sink) {
        let n = self.line_no;
        let Some(blk) = self.stack.last() else {
            sink.problem(
                n,
                self.end,
                format!("line {n}: header outside a block"),
                raw,
            );
            return;
        };
        if !blk.bound {
            return;
        }
        let mut v = recycle(std::mem::take(&mut self.scratch));
        self.split(rest, false, &mut v);
        let names: Vec<String> = v.iter().map(|f| f.unwrap_or("").to_string()).collect();
        self.scratch = recycle(v);
        // A second header in a block: what the first one holds is complete.
        let mut blk = self.stack.pop().expect("invariant: checked above");
        self.flush(&mut blk, sink);
        let bad = match layout {
            Layout::Single if !(2..=3).contains(&names.len()) => Some(format!(
                "line {n}: a @@ header has 2 or 3 fields ([seq] name value), not {}",
                names.len()
            )),
            Layout::Multi if names.len() < 2 => Some(format!(
                "line {n}: a @# header needs an attribute name and objects"
            )),
            _ => None,
        };
        if let Some(reason) = bad {
            sink.problem(n, self.end, reason, raw);
            blk.layout = None;
            self.stack.push(blk);
            return;
        }
        self.schema += 1;
        blk.layout = Some(layout);
        blk.after_header = true;
        blk.info.meta = vec![ColumnMeta::default(); names.len()];
        if layout == Layout::Multi {
            let skip = if names.len() >= 3 && SEQ_NAMES.contains(&names[0].to_lowercase().as_str())
            {
                2
            } else {
                1
            };
            blk.multi_skip = skip;
            blk.objects = names[skip..].to_vec();
            blk.values = vec![Vec::new(); blk.objects.len()];
            blk.attrs.clear();
            blk.multi_line = n;
        }
        blk.names = names;
        self.stack.push(blk);
    }

    fn meta_line(&mut self, marker: &[u8], rest: &str, raw: &[u8], sink: &mut dyn Sink) {
        let n = self.line_no;
        let Some(blk) = self.stack.last() else {
            sink.problem(
                n,
                self.end,
                format!("line {n}: metadata line outside a block"),
                raw,
            );
            return;
        };
        if !blk.bound {
            return;
        }
        if blk.layout != Some(Layout::Horizontal) {
            // Units and limits of `@@`/`@#` blocks are not columns of the records.
            return;
        }
        let mut v = recycle(std::mem::take(&mut self.scratch));
        self.split(rest, false, &mut v);
        let blk = self.stack.last_mut().expect("invariant: checked above");
        blk.after_header = false;
        if v.len() != blk.names.len() {
            let (got, want) = (v.len(), blk.names.len());
            self.scratch = recycle(v);
            sink.problem(
                n,
                self.end,
                format!("line {n}: {got} fields in a metadata line, but the header has {want}"),
                raw,
            );
            return;
        }
        for (m, f) in blk.info.meta.iter_mut().zip(&v) {
            let f = f.filter(|t| *t != "-" && !t.is_empty());
            match marker {
                b"%" => m.type_code = f.map(str::to_string),
                b"$" => m.unit = f.map(str::to_string),
                b":" => {
                    let (lo, hi) = f
                        .and_then(|t| t.split_once(':'))
                        .map_or((None, None), |(a, b)| {
                            (a.trim().parse().ok(), b.trim().parse().ok())
                        });
                    m.min = lo;
                    m.max = hi;
                }
                _ => m.alias = f.map(str::to_string),
            }
        }
        self.scratch = recycle(v);
        self.schema += 1;
    }

    fn data(&mut self, rest: &str, raw: &[u8], sink: &mut dyn Sink) {
        let n = self.line_no;
        let Some(blk) = self.stack.last() else {
            sink.problem(
                n,
                self.end,
                format!("line {n}: data row outside a block"),
                raw,
            );
            return;
        };
        if !blk.bound {
            return;
        }
        let Some(layout) = blk.layout else {
            let class = blk.info.class.clone();
            sink.problem(
                n,
                self.end,
                format!("line {n}: data row in block <{class}> before its @ header"),
                raw,
            );
            return;
        };
        let mut v = recycle(std::mem::take(&mut self.scratch));
        self.split(rest, true, &mut v);
        let width = self.stack.last().map_or(0, |b| b.names.len());
        if v.len() != width {
            let got = v.len();
            self.scratch = recycle(v);
            sink.problem(
                n,
                self.end,
                format!("line {n}: {got} fields, but the header has {width}"),
                raw,
            );
            return;
        }
        let blk = self.stack.last_mut().expect("invariant: checked above");
        blk.after_header = false;
        blk.rows += 1;
        match layout {
            Layout::Horizontal => {
                let blk = self.stack.last().expect("invariant: checked above");
                sink.record(&Record {
                    line: n,
                    end: self.end,
                    block: &blk.info,
                    names: &blk.names,
                    schema: self.schema,
                    object: None,
                    fields: &v,
                    raw: rest,
                });
            }
            Layout::Single => {
                let (name, value) = (v[width - 2], v[width - 1]);
                let name = name.unwrap_or("").to_string();
                let mut blk = self.stack.pop().expect("invariant: checked above");
                if blk.object_keys.contains(&name) {
                    self.emit_object(&mut blk, sink);
                }
                if blk.object.is_empty() {
                    blk.object_line = n;
                }
                blk.held += 2 * name.len() + value.map_or(0, str::len) + HELD_OVERHEAD;
                blk.object_keys.insert(name.clone());
                blk.object.push((name, value.map(str::to_string)));
                let over = blk.held > MAX_HELD_BYTES;
                if over {
                    blk.object.clear();
                    blk.object_keys.clear();
                    blk.held = 0;
                }
                self.stack.push(blk);
                if over {
                    sink.problem(
                        n,
                        self.end,
                        format!(
                            "line {n}: a @@ object larger than {MAX_HELD_BYTES} bytes is dropped"
                        ),
                        raw,
                    );
                }
            }
            Layout::Multi => {
                let skip = blk.multi_skip;
                let attr = v[skip - 1].unwrap_or("").to_string();
                blk.held += attr.len() + HELD_OVERHEAD;
                for (obj, f) in blk.values.iter_mut().zip(&v[skip..]) {
                    blk.held += f.map_or(0, str::len) + HELD_OVERHEAD;
                    obj.push(f.map(str::to_string));
                }
                blk.attrs.push(attr);
                if blk.held > MAX_HELD_BYTES {
                    blk.attrs.clear();
                    blk.values.iter_mut().for_each(Vec::clear);
                    blk.held = 0;
                    self.scratch = recycle(v);
                    sink.problem(
                        n,
                        self.end,
                        format!(
                            "line {n}: a @# block larger than {MAX_HELD_BYTES} bytes is dropped"
                        ),
                        raw,
                    );
                    return;
                }
            }
        }
        self.scratch = recycle(v);
    }
}

impl LineDecoder for Parser {
    fn line(&mut self, raw: &[u8], end: u64, sink: &mut dyn Sink) {
        self.line_no += 1;
        self.end = end;
        let n = self.line_no;
        let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if n == 1 {
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        if let Some((class, _)) = &self.free {
            let t = String::from_utf8_lossy(raw);
            let t = t.trim_start();
            if let Some(rest) = t.strip_prefix("</") {
                let rest = rest.trim_start();
                if rest.starts_with(class.as_str())
                    && rest.to_ascii_lowercase().contains("free")
                    && rest.contains(":=")
                {
                    self.free = None;
                }
            }
            return;
        }
        // Lines that cannot matter are not decoded (a GBK comment before the declaration
        // that says `Code=GBK` is not an error): blanks, lines inside blocks the source
        // does not read (except tags), and comments other than a description line.
        let Some(first) = raw.iter().position(|&c| c != b' ' && c != b'\t') else {
            return;
        };
        let head = &raw[first..];
        let top = self.stack.last();
        if top.is_some_and(|b| !b.bound) && head[0] != b'<' {
            return;
        }
        if is_comment(head)
            && !top
                .is_some_and(|b| b.bound && b.after_header && b.layout == Some(Layout::Horizontal))
        {
            return;
        }
        match decode_line(raw, self.encoding, self.opts.fallback) {
            Ok(text) => self.line_text(&text, raw, sink),
            Err(e) => sink.problem(n, end, format!("line {n}: {e}"), raw),
        }
    }

    fn finish(&mut self, end: u64, sink: &mut dyn Sink) {
        // Past the last line: what the end of the file completes is never taken for
        // something a commit at the file's length already covered.
        let end = end + 1;
        self.end = end;
        if let Some((class, line)) = self.free.take() {
            sink.problem(
                line,
                end,
                format!("FREE block <{class}> opened at line {line} is not closed at the end of the file"),
                b"",
            );
        }
        while let Some(blk) = self.stack.last() {
            let (class, line) = (blk.info.class.clone(), blk.info.line);
            sink.problem(
                line,
                end,
                format!(
                    "block <{class}> opened at line {line} is not closed at the end of the file"
                ),
                b"",
            );
            self.end_block(sink);
        }
    }
}

#[cfg(test)]
#[path = "efile_tests.rs"]
mod tests;
