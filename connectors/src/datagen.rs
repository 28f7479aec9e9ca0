//! `connector = 'datagen'`: a source (or table) of generated rows, for demos and tests.
//!
//! ```sql
//! CREATE SOURCE readings (meter_id BIGINT, kw DOUBLE PRECISION, ts TIMESTAMP, label VARCHAR)
//! WITH (connector = 'datagen',
//!       fields.meter_id.kind = 'sequence', fields.meter_id.start = '1', fields.meter_id.end = '1000000',
//!       fields.kw.min = '0', fields.kw.max = '500',
//!       fields.ts.kind = 'sequence', fields.ts.step = '1000',
//!       fields.label.length = '8',
//!       datagen.rows.per.second = '10000');
//! ```
//!
//! Row `n` (from 0) is a function of `n` and the options: a `sequence` column is `start +
//! n` (numbers) or `start + n * step` milliseconds (timestamps); a `random` column (the
//! default) draws from a generator seeded with (`fields.<c>.seed`, `n`). So rows repeat
//! exactly across runs and restarts. Generation stops after `datagen.rows.total` rows, or
//! when a sequence column passes its `end`. `datagen.split.num` readers share the rows in
//! blocks of `datagen.max.chunk.size`, each committing the next block it will generate
//! with the rows (as the nexmark source does), so a restart resumes without loss or
//! repetition.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use strom_catalog::{ConnectorDef, TableDef};

const STATE: &str = "datagen";

/// How one column is generated.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    /// `start + n` (numbers, strings of numbers) or `start + n * step` ms (timestamps).
    Sequence {
        start: f64,
        end: Option<f64>,
        step: f64,
    },
    /// Uniform in `[min, max]`; strings of `length` letters; booleans fair.
    Random {
        min: f64,
        max: f64,
        length: usize,
        seed: u64,
    },
}

/// A checked declaration.
#[derive(Debug, Clone)]
pub struct Spec {
    fields: Vec<(Field, DataType)>,
    /// Rows to generate (the smaller of `datagen.rows.total` and the shortest sequence).
    pub rows: u64,
    pub rows_per_second: u64,
    pub splits: usize,
    pub chunk: u64,
}

/// 2026-01-01T00:00:00Z in µs: where timestamp sequences start unless told.
const DEFAULT_EPOCH_US: i64 = 1_767_225_600_000_000;

fn parse_f64(k: &str, v: &str) -> Result<f64, String> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("option \"{k}\": \"{v}\" is not a number"))
}

fn parse_u64(k: &str, v: &str) -> Result<u64, String> {
    v.trim()
        .parse::<u64>()
        .map_err(|_| format!("option \"{k}\": \"{v}\" is not a non-negative integer"))
}

/// A timestamp option as µs since the Unix epoch (`2026-01-01 00:00:00`, UTC).
fn parse_time(k: &str, v: &str) -> Result<f64, String> {
    let t = v.trim().replace('T', " ");
    let t = t.trim_end_matches('Z');
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc().timestamp_micros() as f64);
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .expect("midnight")
            .and_utc()
            .timestamp_micros() as f64);
    }
    Err(format!(
        "option \"{k}\": \"{v}\" is not a timestamp like 2026-01-01 00:00:00"
    ))
}

fn supported(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(_, _)
            | DataType::Utf8
            | DataType::Boolean
            | DataType::Timestamp(TimeUnit::Microsecond, _)
            | DataType::Date32
    )
}

pub fn spec(def: &TableDef, c: &ConnectorDef) -> Result<Spec, String> {
    if c.is_sink {
        return Err("connector datagen generates rows: use CREATE SOURCE or CREATE TABLE".into());
    }
    if !c.format.is_empty() || !c.includes.is_empty() {
        return Err("connector datagen takes no FORMAT or INCLUDE (it makes typed rows)".into());
    }
    let columns: Vec<(String, DataType)> = def
        .visible_columns()
        .map(|(_, col)| (col.name.clone(), col.ty.to_arrow()))
        .collect();
    // fields.<column>.<attribute>
    let mut per_column: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (k, v) in &c.options {
        if let Some(rest) = k.strip_prefix("fields.") {
            let (col, attr) = rest
                .rsplit_once('.')
                .ok_or_else(|| format!("option \"{k}\" is not fields.<column>.<attribute>"))?;
            if !columns.iter().any(|(n, _)| n == col) {
                return Err(format!("option \"{k}\": there is no column \"{col}\""));
            }
            per_column
                .entry(col.to_string())
                .or_default()
                .insert(attr.to_string(), v.clone());
        } else if ![
            "connector",
            "datagen.rows.per.second",
            "datagen.rows.total",
            "datagen.split.num",
            "datagen.max.chunk.size",
        ]
        .contains(&k.as_str())
        {
            return Err(format!(
                "unknown option \"{k}\" for connector datagen (known: datagen.rows.per.second, datagen.rows.total, datagen.split.num, datagen.max.chunk.size, fields.<column>.kind|start|end|step|min|max|length|seed)"
            ));
        }
    }
    let mut rows = u64::MAX;
    let mut fields = Vec::with_capacity(columns.len());
    for (i, (name, ty)) in columns.iter().enumerate() {
        if !supported(ty) {
            return Err(format!(
                "column \"{name}\": datagen cannot generate values of its type"
            ));
        }
        let empty = BTreeMap::new();
        let o = per_column.get(name).unwrap_or(&empty);
        let key = |a: &str| format!("fields.{name}.{a}");
        for a in o.keys() {
            if ![
                "kind", "start", "end", "step", "min", "max", "length", "seed",
            ]
            .contains(&a.as_str())
            {
                return Err(format!("unknown option \"{}\"", key(a)));
            }
        }
        let is_time = matches!(ty, DataType::Timestamp(_, _) | DataType::Date32);
        let value = |a: &str| -> Result<Option<f64>, String> {
            o.get(a)
                .map(|v| {
                    if is_time && a != "step" {
                        parse_time(&key(a), v)
                    } else {
                        parse_f64(&key(a), v)
                    }
                })
                .transpose()
        };
        let field = match o.get("kind").map(|k| k.to_ascii_lowercase()).as_deref() {
            Some("sequence") => {
                if matches!(ty, DataType::Boolean) {
                    return Err(format!("column \"{name}\": a boolean cannot be a sequence"));
                }
                let start = value("start")?.unwrap_or(if is_time {
                    DEFAULT_EPOCH_US as f64
                } else {
                    0.0
                });
                let end = value("end")?;
                let step = value("step")?.unwrap_or(1000.0);
                if let Some(e) = end {
                    let per = if is_time { step * 1000.0 } else { 1.0 };
                    if e < start || per <= 0.0 {
                        return Err(format!(
                            "column \"{name}\": the sequence ends before it starts"
                        ));
                    }
                    rows = rows.min((((e - start) / per).floor() as u64).saturating_add(1));
                }
                Field::Sequence { start, end, step }
            }
            None | Some("random") => {
                let (dmin, dmax) = if is_time {
                    (DEFAULT_EPOCH_US as f64, DEFAULT_EPOCH_US as f64 + 86_400e6)
                } else {
                    (0.0, 32767.0)
                };
                let min = value("min")?.unwrap_or(dmin);
                let max = value("max")?.unwrap_or(dmax);
                if max < min {
                    return Err(format!("column \"{name}\": max is below min"));
                }
                let length = match o.get("length") {
                    Some(v) => parse_u64(&key("length"), v)? as usize,
                    None => 10,
                };
                let seed = match o.get("seed") {
                    Some(v) => parse_u64(&key("seed"), v)?,
                    None => i as u64,
                };
                Field::Random {
                    min,
                    max,
                    length,
                    seed,
                }
            }
            Some(other) => {
                return Err(format!(
                    "option \"{}\": \"{other}\" is not sequence or random",
                    key("kind")
                ))
            }
        };
        // Integer columns: every value must fit (a sequence without an end stops there).
        let range = match ty {
            DataType::Int16 => Some((i16::MIN as f64, i16::MAX as f64)),
            DataType::Int32 => Some((i32::MIN as f64, i32::MAX as f64)),
            DataType::Int64 => Some((i64::MIN as f64, i64::MAX as f64)),
            _ => None,
        };
        if let Some((lo, hi)) = range {
            match &field {
                Field::Random { min, max, .. } if *min < lo || *max > hi => {
                    return Err(format!("column \"{name}\": min and max must fit its type"));
                }
                Field::Sequence { start, end, .. } => {
                    if *start < lo || end.is_some_and(|e| e > hi) {
                        return Err(format!("column \"{name}\": the sequence must fit its type"));
                    }
                    rows = rows.min(((hi - start) as u64).saturating_add(1));
                }
                _ => {}
            }
        }
        if let DataType::Decimal128(p, sc) = ty {
            let limit = 10f64.powi(i32::from(*p) - i32::from(*sc));
            if let Field::Random { min, max, .. } = &field {
                if min.abs() >= limit || max.abs() >= limit {
                    return Err(format!(
                        "column \"{name}\": min and max must fit its type (give them for a NUMERIC)"
                    ));
                }
            }
        }
        fields.push((field, ty.clone()));
    }
    if let Some(v) = c.options.get("datagen.rows.total") {
        rows = rows.min(parse_u64("datagen.rows.total", v)?);
    }
    let num = |k: &str, default: u64| c.options.get(k).map_or(Ok(default), |v| parse_u64(k, v));
    let splits = num("datagen.split.num", 1)?;
    if !(1..=16).contains(&splits) {
        return Err("datagen.split.num must be from 1 to 16".into());
    }
    let chunk = num("datagen.max.chunk.size", 1024)?;
    if !(1..=100_000).contains(&chunk) {
        return Err("datagen.max.chunk.size must be from 1 to 100000".into());
    }
    if splits > 1 && def.watermark.is_some() {
        return Err("datagen.split.num > 1 with a WATERMARK: readers run at their own pace, so one could make another's rows late (use one reader)".into());
    }
    Ok(Spec {
        fields,
        rows,
        rows_per_second: num("datagen.rows.per.second", 10_000)?,
        splits: splits as usize,
        chunk,
    })
}

fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row `n`.
pub fn row(spec: &Spec, n: u64) -> Vec<ScalarValue> {
    spec.fields
        .iter()
        .map(|(f, ty)| {
            // The value as a number (µs for timestamps), or a string.
            let (x, text): (f64, Option<String>) = match f {
                Field::Sequence { start, step, .. } => {
                    let per = if matches!(ty, DataType::Timestamp(_, _) | DataType::Date32) {
                        step * 1000.0
                    } else {
                        1.0
                    };
                    let x = start + n as f64 * per;
                    (
                        x,
                        matches!(ty, DataType::Utf8).then(|| format!("{}", x as i64)),
                    )
                }
                Field::Random {
                    min,
                    max,
                    length,
                    seed,
                } => {
                    let r = mix(*seed, n);
                    let u = (r >> 11) as f64 / (1u64 << 53) as f64;
                    let text = matches!(ty, DataType::Utf8).then(|| {
                        let mut s = String::with_capacity(*length);
                        let mut z = r;
                        for i in 0..*length {
                            if i % 12 == 0 {
                                z = mix(z, i as u64);
                            }
                            s.push((b'a' + (z % 26) as u8) as char);
                            z /= 26;
                        }
                        s
                    });
                    let x = if matches!(
                        ty,
                        DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::Date32
                    ) || matches!(ty, DataType::Timestamp(_, _))
                    {
                        // Integers uniform over [ceil(min), floor(max)].
                        let (lo, hi) = (min.ceil(), max.floor().max(min.ceil()));
                        let span = (hi - lo) as u128 + 1;
                        lo + (u128::from(mix(r, 1)) % span) as f64
                    } else {
                        min + u * (max - min)
                    };
                    (x, text)
                }
            };
            match ty {
                DataType::Int16 => ScalarValue::Int16(Some(x as i16)),
                DataType::Int32 => ScalarValue::Int32(Some(x as i32)),
                DataType::Int64 => ScalarValue::Int64(Some(x as i64)),
                DataType::Float32 => ScalarValue::Float32(Some(x as f32)),
                DataType::Float64 => ScalarValue::Float64(Some(x)),
                DataType::Decimal128(p, s) => ScalarValue::Decimal128(
                    Some((x * 10f64.powi(i32::from(*s))).round() as i128),
                    *p,
                    *s,
                ),
                // A fair coin from the row's own bits (min and max do not apply).
                DataType::Boolean => ScalarValue::Boolean(Some(match f {
                    Field::Random { seed, .. } => mix(*seed, n) & 1 == 1,
                    Field::Sequence { .. } => n % 2 == 1,
                })),
                DataType::Timestamp(_, tz) => {
                    ScalarValue::TimestampMicrosecond(Some(x as i64), tz.clone())
                }
                DataType::Date32 => ScalarValue::Date32(Some((x / 86_400e6).floor() as i32)),
                _ => ScalarValue::Utf8(text),
            }
        })
        .collect()
}

/// How a datagen source or table is read (see [`crate::generated`]).
pub fn blocks(def: &TableDef) -> Result<crate::generated::Blocks, String> {
    let c = def.connector.as_ref().ok_or("no connector")?;
    let spec = spec(def, c)?;
    let sp = spec.clone();
    let schema = crate::generated::schema(def);
    let projection: Vec<usize> = (0..schema.fields().len()).collect();
    Ok(crate::generated::Blocks {
        state: STATE,
        total: spec.rows,
        chunk: spec.chunk,
        splits: spec.splits,
        // 0: as fast as the views take them.
        rate: (spec.rows_per_second > 0).then_some(spec.rows_per_second),
        rows: Arc::new(move |first, last| {
            let rows: Vec<_> = (first..last).map(|n| row(&sp, n)).collect();
            strom_engine::table::rows_to_batch(&schema, &projection, &rows)
                .map_err(|e| e.to_string())
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_catalog::{ColumnDef, SchemaId, SqlType, TableId};

    fn def(cols: &[(&str, SqlType)], options: &[(&str, &str)]) -> (TableDef, ConnectorDef) {
        let c = ConnectorDef {
            is_source: true,
            is_sink: false,
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("connector".to_string(), "datagen".to_string())])
                .collect(),
            format: String::new(),
            encode: String::new(),
            encode_options: Default::default(),
            includes: Vec::new(),
        };
        let def = TableDef {
            id: TableId(1),
            schema: SchemaId(1),
            name: "g".into(),
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
            connector: Some(c.clone()),
            watermark: None,
            indexes: Vec::new(),
            next_index_id: 0,
        };
        (def, c)
    }

    #[test]
    fn sequences_count_and_end_randoms_stay_in_range_and_repeat() {
        let (d, c) = def(
            &[
                ("id", SqlType::BigInt),
                ("kw", SqlType::Double),
                ("n", SqlType::Int),
                ("ts", SqlType::Timestamp),
                ("label", SqlType::Varchar(None)),
                ("ok", SqlType::Boolean),
            ],
            &[
                ("fields.id.kind", "sequence"),
                ("fields.id.start", "1"),
                ("fields.id.end", "1000"),
                ("fields.kw.min", "0"),
                ("fields.kw.max", "500"),
                ("fields.n.min", "-3"),
                ("fields.n.max", "3"),
                ("fields.ts.kind", "sequence"),
                ("fields.ts.start", "2026-01-01 00:00:00"),
                ("fields.ts.step", "500"),
                ("fields.label.length", "8"),
            ],
        );
        let s = spec(&d, &c).unwrap();
        assert_eq!(s.rows, 1000);
        let rows: Vec<Vec<ScalarValue>> = (0..s.rows).map(|n| row(&s, n)).collect();
        assert_eq!(rows[0][0], ScalarValue::Int64(Some(1)));
        assert_eq!(rows[999][0], ScalarValue::Int64(Some(1000)));
        assert_eq!(
            rows[2][3],
            ScalarValue::TimestampMicrosecond(Some(DEFAULT_EPOCH_US + 1_000_000), None)
        );
        let mut seen_n = std::collections::BTreeSet::new();
        let mut trues = 0;
        for r in &rows {
            let ScalarValue::Float64(Some(kw)) = r[1] else {
                panic!()
            };
            assert!((0.0..=500.0).contains(&kw));
            let ScalarValue::Int32(Some(n)) = r[2] else {
                panic!()
            };
            seen_n.insert(n);
            let ScalarValue::Utf8(Some(l)) = &r[4] else {
                panic!()
            };
            assert!(
                l.len() == 8 && l.chars().all(|ch| ch.is_ascii_lowercase()),
                "{l}"
            );
            trues += usize::from(r[5] == ScalarValue::Boolean(Some(true)));
        }
        assert_eq!(
            seen_n.into_iter().collect::<Vec<_>>(),
            (-3..=3).collect::<Vec<_>>()
        );
        assert!((400..600).contains(&trues), "{trues} of 1000 true");
        assert_eq!(row(&s, 123), rows[123], "a row is a function of its number");
    }

    #[test]
    fn bad_declarations_are_rejected() {
        let cols = [("id", SqlType::BigInt)];
        for (opts, msg) in [
            (
                vec![("fields.nope.kind", "sequence")],
                "there is no column \"nope\"",
            ),
            (
                vec![("fields.id.kind", "counter")],
                "is not sequence or random",
            ),
            (
                vec![("fields.id.min", "5"), ("fields.id.max", "1")],
                "max is below min",
            ),
            (
                vec![("fields.id.colour", "red")],
                "unknown option \"fields.id.colour\"",
            ),
            (
                vec![("datagen.speed", "1")],
                "unknown option \"datagen.speed\"",
            ),
            (
                vec![
                    ("fields.id.kind", "sequence"),
                    ("fields.id.start", "5"),
                    ("fields.id.end", "1"),
                ],
                "ends before it starts",
            ),
        ] {
            let (d, c) = def(&cols, &opts);
            let e = spec(&d, &c).unwrap_err();
            assert!(e.contains(msg), "{opts:?}: {e}");
        }
        let (d, c) = def(&cols, &[("datagen.rows.total", "7")]);
        assert_eq!(spec(&d, &c).unwrap().rows, 7);
    }
}
