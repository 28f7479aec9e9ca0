//! `ENCODE DELIMITED (delimiter = '||')`: one record per line, fields split by a literal
//! delimiter of one or more characters ("ordinary data files" of the grid use `||`).
//!
//! - The delimiter is matched leftmost and without overlap: `a|||b` is `a`, `|b`.
//! - There is no quoting and no escaping; a value cannot hold the delimiter.
//! - An empty field is NULL, as is a field in `null_tokens` (none by default). Trailing
//!   empty fields are kept: `a||b||` has three fields.
//! - `header = 'auto'` (the default) takes the first line as a header when none of its
//!   fields is a number and every field names a declared column; `'true'` always,
//!   `'false'` never. With a header, columns bind by name (or by position if the names
//!   differ and the count matches); without one, by position.
//! - A row whose field count differs from the header's (or the columns') is rejected with
//!   its line number.

use crate::text_rows::{
    decode_line, recycle, BlockInfo, Encoding, LineDecoder, NullTokens, Record, Sink,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Auto,
    Yes,
    No,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub delimiter: String,
    pub header: Header,
    pub null_tokens: Vec<String>,
    pub encoding: Encoding,
    pub fallback: Option<Encoding>,
}

pub struct Parser {
    opts: Options,
    nulls: NullTokens,
    /// The source's data column names (for `header = 'auto'`).
    columns: Vec<String>,
    names: Vec<String>,
    block: BlockInfo,
    line_no: u64,
    /// Whether a (non-empty) line was seen: the header can only be the first.
    started: bool,
    scratch: Vec<Option<&'static str>>,
}

impl Parser {
    pub fn new(opts: Options, columns: Vec<String>) -> Parser {
        Parser {
            nulls: NullTokens::new(&opts.null_tokens),
            opts,
            columns,
            names: Vec::new(),
            block: BlockInfo::default(),
            line_no: 0,
            started: false,
            scratch: Vec::new(),
        }
    }

    fn looks_like_header(&self, fields: &[Option<&str>]) -> bool {
        fields.iter().all(|f| {
            f.is_some_and(|t| {
                t.trim().parse::<f64>().is_err()
                    && self
                        .columns
                        .iter()
                        .any(|c| c.eq_ignore_ascii_case(t.trim()))
            })
        })
    }
}

/// Splits `line` at every (non-overlapping) `delim`.
pub fn split<'a>(line: &'a str, delim: &str, nulls: &NullTokens, out: &mut Vec<Option<&'a str>>) {
    out.clear();
    let null = |f: &str| nulls.is_null(f);
    let d = delim.as_bytes();
    let b = line.as_bytes();
    let mut start = 0;
    // memchr on the delimiter's first byte, then compare the rest.
    let mut from = 0;
    while let Some(p) = memchr::memchr(d[0], &b[from..]) {
        let at = from + p;
        // (Compared byte by byte: delimiters are short, and a `memcmp` call per
        // candidate costs more than the comparison.)
        if b.len() - at >= d.len() && d.iter().zip(&b[at..]).all(|(x, y)| x == y) {
            let f = &line[start..at];
            out.push((!null(f)).then_some(f));
            start = at + d.len();
            from = start;
        } else {
            from = at + 1;
        }
    }
    let f = &line[start..];
    out.push((!null(f)).then_some(f));
}

impl LineDecoder for Parser {
    fn line(&mut self, raw: &[u8], end: u64, sink: &mut dyn Sink) {
        self.line_no += 1;
        let n = self.line_no;
        let mut raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if n == 1 {
            raw = raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw);
        }
        let text = match decode_line(raw, self.opts.encoding, self.opts.fallback) {
            Ok(t) => t,
            Err(e) => {
                sink.problem(n, end, format!("line {n}: {e}"), raw);
                return;
            }
        };
        if text.is_empty() {
            return;
        }
        let mut v = recycle(std::mem::take(&mut self.scratch));
        split(&text, &self.opts.delimiter, &self.nulls, &mut v);
        let first = !std::mem::replace(&mut self.started, true);
        if first
            && match self.opts.header {
                Header::Yes => true,
                Header::No => false,
                Header::Auto => self.looks_like_header(&v),
            }
        {
            self.names = v
                .iter()
                .map(|f| f.unwrap_or("").trim().to_string())
                .collect();
            self.scratch = recycle(v);
            return;
        }
        let width = if self.names.is_empty() {
            self.columns.len()
        } else {
            self.names.len()
        };
        if v.len() != width {
            sink.problem(
                n,
                end,
                format!("line {n}: {} fields, but {width} were expected", v.len()),
                raw,
            );
        } else {
            sink.record(&Record {
                line: n,
                end,
                block: &self.block,
                names: &self.names,
                schema: 0,
                object: None,
                fields: &v,
                raw: &text,
            });
        }
        self.scratch = recycle(v);
    }

    fn finish(&mut self, _end: u64, _sink: &mut dyn Sink) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(line: &str, delim: &str) -> Vec<Option<String>> {
        let mut v = Vec::new();
        split(line, delim, &NullTokens::new(&[]), &mut v);
        v.into_iter().map(|f| f.map(str::to_string)).collect()
    }

    fn s(x: &str) -> Option<String> {
        Some(x.to_string())
    }

    #[test]
    fn double_bar_rules() {
        assert_eq!(fields("a||b||c", "||"), vec![s("a"), s("b"), s("c")]);
        // Leftmost, non-overlapping.
        assert_eq!(fields("a|||b", "||"), vec![s("a"), s("|b")]);
        // Empty fields are NULL, trailing ones kept.
        assert_eq!(fields("a||||c", "||"), vec![s("a"), None, s("c")]);
        assert_eq!(fields("a||b||", "||"), vec![s("a"), s("b"), None]);
        assert_eq!(fields("||", "||"), vec![None, None]);
        assert_eq!(fields("", "||"), vec![None]);
        // A single bar is data.
        assert_eq!(fields("a|b||c", "||"), vec![s("a|b"), s("c")]);
        // Other delimiters.
        assert_eq!(fields("1;2;;", ";"), vec![s("1"), s("2"), None, None]);
        assert_eq!(fields("x<>y", "<>"), vec![s("x"), s("y")]);
        assert_eq!(fields("江苏||梅村", "||"), vec![s("江苏"), s("梅村")]);
    }

    struct Count(usize, usize);

    impl Sink for Count {
        fn record(&mut self, r: &Record<'_>) {
            let want = if r.names.is_empty() { 3 } else { r.names.len() };
            assert_eq!(
                r.fields.len(),
                want,
                "rows handed out have the expected width"
            );
            self.0 += 1;
        }
        fn problem(&mut self, _: u64, _: u64, _: String, _: &[u8]) {
            self.1 += 1;
        }
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

            /// Splitting loses nothing: the fields joined by the delimiter are the line.
            #[test]
            fn split_then_join_is_the_line(
                line in "[a|b中\\-]{0,40}",
                delim in prop::sample::select(vec!["||", "|", ";", "<>", "中"]),
            ) {
                let mut v = Vec::new();
                split(&line, delim, &NullTokens::new(&[]), &mut v);
                let joined: Vec<&str> = v.iter().map(|f| f.unwrap_or("")).collect();
                prop_assert_eq!(joined.join(delim), line);
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
                for header in [Header::Auto, Header::Yes, Header::No] {
                    let mut p = Parser::new(
                        Options {
                            delimiter: "||".into(),
                            header,
                            null_tokens: vec!["-".into()],
                            encoding: Encoding::Utf8,
                            fallback: Some(Encoding::Gbk),
                        },
                        vec!["a".into(), "b".into(), "c".into()],
                    );
                    let mut sink = Count(0, 0);
                    let mut end = 0;
                    for line in bytes.split(|&b| b == b'\n') {
                        end += line.len() as u64 + 1;
                        p.line(line, end, &mut sink);
                    }
                    p.finish(end, &mut sink);
                }
            }
        }
    }
}
