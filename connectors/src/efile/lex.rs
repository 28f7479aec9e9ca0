//! The lexical pieces of E files: tags (`<Class::Entity a=1 b='x y'>`), their attributes,
//! and the helpers the field splitter uses for quotes and trailing comments.

/// Whether `b` starts with `//`.
#[inline]
pub(super) fn is_comment(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == b'/' && b[1] == b'/'
}

/// Where a ` //` comment starts inside a TAB field (at its blank), if it has one.
#[inline]
pub(super) fn comment_start(f: &str) -> Option<usize> {
    let b = f.as_bytes();
    let mut from = 0;
    while let Some(p) = memchr::memchr(b'/', &b[from..]) {
        let at = from + p;
        if at > 0 && b[at - 1] == b' ' && b.get(at + 1) == Some(&b'/') {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// The quote closing the field that opens at `open`: the first matching quote followed
/// by a separator or the end of the line.
pub(super) fn closing_quote(b: &[u8], open: usize, is_sep: impl Fn(u8) -> bool) -> Option<usize> {
    let q = b[open];
    let mut i = open + 1;
    while let Some(p) = memchr::memchr(q, &b[i..]) {
        let at = i + p;
        if at + 1 == b.len() || is_sep(b[at + 1]) {
            return Some(at);
        }
        i = at + 1;
    }
    None
}

pub(super) fn strip_closer<'a>(s: &'a str, closer: &str) -> &'a str {
    let t = s.trim_end();
    t.strip_suffix(closer).unwrap_or(t)
}

pub(super) struct Tag {
    pub class: String,
    pub entity: Option<String>,
    pub attrs: Vec<(String, String)>,
    pub self_closing: bool,
    pub free: bool,
}

/// Parses an opening tag after its `<` (anything after the closing `>` is ignored).
pub(super) fn parse_tag(s: &str) -> Option<Tag> {
    let s = s.trim_start();
    let end = tag_end(s)?;
    let mut body = &s[..end];
    let self_closing = body.trim_end().ends_with('/');
    if self_closing {
        body = body.trim_end().strip_suffix('/').unwrap_or(body);
    }
    let name_end = body
        .find(|c: char| c.is_whitespace() || c == ':')
        .unwrap_or(body.len());
    let class = body[..name_end].to_string();
    if class.is_empty() {
        return None;
    }
    let mut rest = &body[name_end..];
    let mut entity = None;
    let mut free = false;
    let t = rest.trim_start();
    if let Some(a) = t.strip_prefix("::=").or_else(|| t.strip_prefix(":=")) {
        // `<Name:=FREE SIZE=n>`, `<Name ::=Free>`: a FREE block.
        let a = a.trim_start();
        if a.get(..4).is_some_and(|w| w.eq_ignore_ascii_case("free")) {
            free = true;
            rest = &a[4..];
        }
    } else if let Some(r) = rest.strip_prefix("::") {
        let e_end = r.find(char::is_whitespace).unwrap_or(r.len());
        entity = Some(r[..e_end].to_string());
        rest = &r[e_end..];
    }
    let attrs = parse_attrs(rest);
    Some(Tag {
        class,
        entity,
        attrs,
        self_closing,
        free,
    })
}

/// The index of the `>` that ends a tag, outside quoted attribute values.
pub(super) fn tag_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut quote: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == b'\'' || c == b'"') && i > 0 && b[i - 1] == b'=' => quote = Some(c),
            None if c == b'>' => return Some(i),
            None => {}
        }
    }
    None
}

/// `key=value` pairs separated by blanks; values may be quoted (with blanks inside) or
/// empty. A token without `=` is a key with an empty value.
pub fn parse_attrs(s: &str) -> Vec<(String, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() {
            return out;
        }
        let start = i;
        while i < b.len() && b[i] != b' ' && b[i] != b'\t' && b[i] != b'=' {
            i += 1;
        }
        let key = s[start..i].to_string();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            let value = if i < b.len() && (b[i] == b'\'' || b[i] == b'"') {
                let q = b[i];
                let close = memchr::memchr(q, &b[i + 1..]).map(|p| i + 1 + p);
                let v = match close {
                    Some(c) => &s[i + 1..c],
                    None => &s[i + 1..],
                };
                i = close.map_or(b.len(), |c| c + 1);
                v
            } else {
                let vs = i;
                while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                    i += 1;
                }
                &s[vs..i]
            };
            out.push((key, value.to_string()));
        } else {
            out.push((key, String::new()));
        }
    }
}
