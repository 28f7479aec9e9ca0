//! `name_pattern`: what a file's name says about it.
//!
//! ```text
//! name_pattern = '{company}_{subcompany}_{system}_{date:%Y%m%d}_{time:%H%M%S}[_{seq}].{suffix}'
//! AA_BB_SCADA_20150313_170507.DT  ->  company AA, subcompany BB, system SCADA,
//!                                     snapshot 2015-03-13 17:05:07 (local), suffix DT
//! ```
//!
//! - `{company}`, `{subcompany}`, `{system}`, `{suffix}` and any other `{name}` match one
//!   or more characters up to the literal that follows (`[^_]+` before `_`); the last
//!   field runs to the end of the name.
//! - `{date:FMT}`, `{time:FMT}` and `{datetime:FMT}` take strftime-style formats with
//!   `%Y %m %d %H %M %S` (digits of fixed width); together they give the snapshot time,
//!   validated as a calendar time and read in the source's `timezone` (UTC+8 default).
//! - `[...]` is optional; `{seq}` matches digits.
//! - Matching is anchored, and the suffix is compared case-insensitively.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use regex::Regex;

/// What a matching name gives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NameFacts {
    pub company: Option<String>,
    pub subcompany: Option<String>,
    pub system: Option<String>,
    pub suffix: Option<String>,
    pub seq: Option<String>,
    /// The local snapshot time.
    pub snapshot: Option<NaiveDateTime>,
}

#[derive(Debug, Clone)]
pub struct NamePattern {
    regex: Regex,
    /// Capture name -> its strftime format (date/time/datetime fields).
    formats: Vec<(String, String)>,
}

impl NamePattern {
    pub fn compile(pattern: &str) -> Result<NamePattern, String> {
        let bad = |why: &str| format!("name_pattern '{pattern}': {why}");
        let mut re = String::from("^");
        let mut formats = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let chars: Vec<char> = pattern.chars().collect();
        let mut i = 0;
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '{' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == '}')
                        .ok_or_else(|| bad("a '{' is not closed"))?
                        + i;
                    let inner: String = chars[i + 1..close].iter().collect();
                    let (name, fmt) = match inner.split_once(':') {
                        Some((n, f)) => (n.trim().to_string(), Some(f.to_string())),
                        None => (inner.trim().to_string(), None),
                    };
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(bad(&format!("'{{{inner}}}' is not a field name")));
                    }
                    if seen.contains(&name) {
                        return Err(bad(&format!("field {name} appears twice")));
                    }
                    seen.push(name.clone());
                    let next = chars.get(close + 1).copied();
                    let body = match (&fmt, name.as_str()) {
                        (Some(_), n) if !matches!(n, "date" | "time" | "datetime") => {
                            return Err(bad(&format!(
                                "only {{date:…}}, {{time:…}} and {{datetime:…}} take a format, not {{{n}:…}}"
                            )))
                        }
                        (Some(f), _) => {
                            formats.push((name.clone(), f.clone()));
                            time_regex(f).map_err(|e| bad(&e))?
                        }
                        (None, "date" | "time" | "datetime") => {
                            return Err(bad(&format!("{{{name}}} needs a format, like {{{name}:%Y%m%d}}")))
                        }
                        (None, "seq") => r"\d+".to_string(),
                        (None, _) => match next {
                            Some(c) if c != '{' && c != '[' && c != ']' => {
                                format!("[^{}]+", regex::escape(&c.to_string()))
                            }
                            _ => ".+".to_string(),
                        },
                    };
                    re.push_str(&format!("(?P<{name}>{body})"));
                    i = close + 1;
                }
                '[' => {
                    depth += 1;
                    re.push_str("(?:");
                    i += 1;
                }
                ']' => {
                    if depth == 0 {
                        return Err(bad("']' without '['"));
                    }
                    depth -= 1;
                    re.push_str(")?");
                    i += 1;
                }
                c => {
                    re.push_str(&regex::escape(&c.to_string()));
                    i += 1;
                }
            }
        }
        if depth != 0 {
            return Err(bad("a '[' is not closed"));
        }
        re.push('$');
        let regex = Regex::new(&re).map_err(|e| bad(&e.to_string()))?;
        Ok(NamePattern { regex, formats })
    }

    /// The facts of a matching name; `None` when the name does not match or its date and
    /// time are not a calendar time.
    pub fn facts(&self, name: &str) -> Option<NameFacts> {
        let c = self.regex.captures(name)?;
        let get = |k: &str| c.name(k).map(|m| m.as_str().to_string());
        let mut date: Option<NaiveDate> = None;
        let mut time: Option<NaiveTime> = None;
        let mut datetime: Option<NaiveDateTime> = None;
        for (field, fmt) in &self.formats {
            let Some(text) = c.name(field).map(|m| m.as_str()) else {
                continue;
            };
            match field.as_str() {
                "date" => date = Some(NaiveDate::parse_from_str(text, fmt).ok()?),
                "time" => time = Some(NaiveTime::parse_from_str(text, fmt).ok()?),
                _ => datetime = Some(NaiveDateTime::parse_from_str(text, fmt).ok()?),
            }
        }
        let snapshot =
            datetime.or_else(|| date.map(|d| d.and_time(time.unwrap_or(NaiveTime::MIN))));
        Some(NameFacts {
            company: get("company"),
            subcompany: get("subcompany"),
            system: get("system"),
            suffix: get("suffix"),
            seq: get("seq"),
            snapshot,
        })
    }
}

/// The regex of a strftime-style format (fixed-width digit fields).
fn time_regex(fmt: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push_str(&regex::escape(&c.to_string()));
            continue;
        }
        out.push_str(match it.next() {
            Some('Y') => r"\d{4}",
            Some('m' | 'd' | 'H' | 'M' | 'S' | 'y') => r"\d{2}",
            Some('%') => "%",
            other => {
                return Err(format!(
                    "format '{fmt}': %{} is not supported (use %Y %m %d %H %M %S)",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str =
        "{company}_{subcompany}_{system}_{date:%Y%m%d}_{time:%H%M%S}[_{seq}].{suffix}";

    #[test]
    fn grid_names() {
        let p = NamePattern::compile(GRID).unwrap();
        let f = p.facts("AA_BB_SCADA_20150313_170507.DT").unwrap();
        assert_eq!(f.company.as_deref(), Some("AA"));
        assert_eq!(f.subcompany.as_deref(), Some("BB"));
        assert_eq!(f.system.as_deref(), Some("SCADA"));
        assert_eq!(f.suffix.as_deref(), Some("DT"));
        assert_eq!(f.seq, None);
        assert_eq!(f.snapshot.unwrap().to_string(), "2015-03-13 17:05:07");
        let f = p.facts("LP_K8000_STAdfgYDB_20191105_113002.DT").unwrap();
        assert_eq!(f.system.as_deref(), Some("STAdfgYDB"));
        let f = p.facts("SG_JS_SCADA_20250313_170500_2.TXT").unwrap();
        assert_eq!(f.seq.as_deref(), Some("2"));
        // Not names of the pattern, or not calendar times.
        for bad in [
            "ALARM_MESSAGE2017031316372868.RB",
            "AA_BB_SCADA_20151313_170507.DT",
            "AA_BB_SCADA_20150230_170507.DT",
            "AA_BB_SCADA_20150313_240000.DT",
            "AA_BB_SCADA_20150313_170507",
            "AA_BB_SCADA_2015031_170507.DT",
            "AA__SCADA_20150313_170507.DT",
        ] {
            assert_eq!(p.facts(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_patterns_are_explained() {
        for (p, want) in [
            ("{company", "not closed"),
            ("{date}", "needs a format"),
            ("{date:%Q}", "%Q is not supported"),
            ("{a}_{a}", "twice"),
            ("[{a}", "not closed"),
            ("{a b}", "not a field name"),
            ("{year:%Y}", "take a format"),
        ] {
            let e = NamePattern::compile(p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }
}
