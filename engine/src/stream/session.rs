//! Session windows: `SESSION(t, ts, gap [, key ...])`. Per key, rows whose times are less
//! than `gap` apart form one session, from its first row's time (`window_start`) to its
//! last row's time plus `gap` (`window_end`).
//!
//! A session is final only when no future row can extend it: when the watermark on `ts`
//! has reached its end (a future row has `ts >= watermark >= window_end`, so it is at least
//! `gap` after the session's last row). So this operator holds each key's rows until then
//! and emits a closed session's rows once, all in one epoch, with their `window_start` and
//! `window_end` appended: its output only grows, and an aggregation grouping by the key
//! and the window gets each session whole, final. Input must be append-only.
//!
//! State, in ordered tables:
//! - `rows`: under the key, `encode(ts) ++ row value encoding` -> count and row (time
//!   order; the time column is a microsecond timestamp, 9 bytes encoded);
//! - `keys`: `encode(first ts of the key's held rows) ++ key` -> key, so closing reads
//!   only keys whose earliest held row may have closed.
//!
//! The output's watermark on `window_start` (and `ts`) is the earliest held row's time, or
//! the input watermark when nothing is held; on `window_end`, just past the input
//! watermark (sessions still to come end after it).

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;

use super::chunk::{Op, StreamChunk};
use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;
use crate::state::{StateAlloc, StateTable};

#[derive(Debug)]
pub struct SessionWindow {
    time: usize,
    gap: i64,
    keys: Vec<usize>,
    /// Input types (row encoding).
    types: Vec<datafusion::arrow::datatypes::DataType>,
    output: SchemaRef,
    rows: StateTable,
    firsts: StateTable,
}

use crate::clock::micros_of as micros;

/// A time of the same type as `like`, `micros` after the epoch.
fn time_like(like: &ScalarValue, micros: i64) -> ScalarValue {
    match like {
        ScalarValue::TimestampMillisecond(_, tz) => {
            ScalarValue::TimestampMillisecond(Some(micros / 1_000), tz.clone())
        }
        ScalarValue::TimestampSecond(_, tz) => {
            ScalarValue::TimestampSecond(Some(micros / 1_000_000), tz.clone())
        }
        ScalarValue::TimestampNanosecond(_, tz) => {
            ScalarValue::TimestampNanosecond(Some(micros.saturating_mul(1_000)), tz.clone())
        }
        ScalarValue::TimestampMicrosecond(_, tz) => {
            ScalarValue::TimestampMicrosecond(Some(micros), tz.clone())
        }
        other => other.clone(),
    }
}

impl SessionWindow {
    /// `input`'s rows come out with `window_start` and `window_end` appended (`output`).
    pub fn try_new(
        input: &SchemaRef,
        output: SchemaRef,
        time: usize,
        gap: i64,
        keys: Vec<usize>,
        state: &mut StateAlloc,
    ) -> Result<Self> {
        if gap <= 0
            || time >= input.fields().len()
            || keys.iter().any(|&k| k >= input.fields().len())
        {
            return Err(EngineError::Internal("bad session window".into()));
        }
        Ok(SessionWindow {
            time,
            gap,
            keys,
            types: input
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
            output,
            rows: state.ordered_table(),
            firsts: state.ordered_table(),
        })
    }

    pub fn state_tables(&mut self) -> Vec<&mut StateTable> {
        vec![&mut self.rows, &mut self.firsts]
    }

    fn key_of(&self, row: &[ScalarValue]) -> Result<Vec<u8>> {
        let key: Vec<ScalarValue> = self.keys.iter().map(|&k| row[k].clone()).collect();
        keys::encode_key(&key)
    }

    /// The earliest held time of a key (None: nothing held).
    fn first_of(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut first = None;
        self.rows.scan_ordered(key, false, |suffix, _| {
            // The suffix starts with the encoded time (9 bytes for a present timestamp).
            first = Some(suffix.get(..9).unwrap_or(suffix).to_vec());
            Ok(false)
        })?;
        Ok(first)
    }

    fn firsts_key(first: &[u8], key: &[u8]) -> Vec<u8> {
        let mut k = first.to_vec();
        k.extend_from_slice(key);
        k
    }

    /// Holds the chunks' rows.
    pub fn apply(&mut self, chunk: &StreamChunk) -> Result<()> {
        for (op, row) in chunk.rows()? {
            if op.sign() < 0 {
                return Err(EngineError::Internal(
                    "a session window's input deleted a row: SESSION needs append-only input"
                        .into(),
                ));
            }
            if micros(&row[self.time]).is_none() {
                continue; // no time: in no session
            }
            let key = self.key_of(&row)?;
            let before = self.first_of(&key)?;
            let mut time = Vec::new();
            keys::encode_key_datum(&row[self.time], &mut time)?;
            let mut suffix = time.clone();
            suffix.extend(row::encode_row(&row)?);
            self.rows
                .multiset_add(&key, &suffix, 1, || row::encode_row(&row))?;
            // Rows are only added here: the earliest held time is the smaller of the two.
            let after = Some(match before.clone() {
                Some(b) if b <= time => b,
                _ => time,
            });
            if before != after {
                if let Some(b) = before {
                    self.firsts.delete(&[], &Self::firsts_key(&b, &key))?;
                }
                if let Some(a) = after {
                    self.firsts
                        .put(&[], &Self::firsts_key(&a, &key), key.clone())?;
                }
            }
        }
        Ok(())
    }

    /// Emits every held session the watermark `wm` (on the time column) has closed, and
    /// returns the output chunk and the earliest time still held.
    pub fn close(
        &mut self,
        wm: Option<&ScalarValue>,
    ) -> Result<(Option<StreamChunk>, Option<i64>)> {
        let mut out: Vec<(Op, Vec<ScalarValue>)> = Vec::new();
        if let Some(wm) = wm.and_then(micros) {
            // Keys whose earliest held row could end a session by now.
            let gap = self.gap;
            let mut candidates: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut bound = Vec::new();
            keys::encode_key_datum(
                &ScalarValue::TimestampMicrosecond(Some(wm.saturating_sub(gap) + 1), None),
                &mut bound,
            )?;
            self.firsts.scan_ordered(&[], false, |suffix, key| {
                // Timestamps of every unit encode alike (flag and i64): compare the time.
                if suffix.get(..9).unwrap_or(suffix) >= bound.as_slice() {
                    return Ok(false);
                }
                candidates.push((suffix.to_vec(), key.to_vec()));
                Ok(true)
            })?;
            for (firsts_key, key) in candidates {
                let mut held: Vec<(Vec<u8>, i64, Vec<ScalarValue>)> = Vec::new();
                let types = self.types.clone();
                let mut error = None;
                self.rows.scan_ordered(&key, false, |suffix, value| {
                    let count = crate::state::multiset_count(value)?;
                    match row::decode_row(&value[8..], &types) {
                        Ok(r) => held.push((suffix.to_vec(), count, r)),
                        Err(e) => {
                            error = Some(e);
                            return Ok(false);
                        }
                    }
                    Ok(true)
                })?;
                if let Some(reason) = error {
                    return Err(EngineError::Corrupt {
                        table: "session window state".into(),
                        reason,
                    });
                }
                // Split into sessions; emit those that end by the watermark.
                let mut i = 0;
                while i < held.len() {
                    let start = micros(&held[i].2[self.time]).unwrap_or(i64::MIN);
                    let mut last = start;
                    let mut j = i + 1;
                    while j < held.len() {
                        let t = micros(&held[j].2[self.time]).unwrap_or(i64::MIN);
                        if t - last >= gap {
                            break;
                        }
                        last = t;
                        j += 1;
                    }
                    let end = last.saturating_add(gap);
                    if end > wm {
                        break; // this session, and those after it, are still open
                    }
                    let like = &held[i].2[self.time];
                    let (ws, we) = (time_like(like, start), time_like(like, end));
                    for (suffix, count, row) in &held[i..j] {
                        let mut r = row.clone();
                        r.push(ws.clone());
                        r.push(we.clone());
                        for _ in 0..*count {
                            out.push((Op::Insert, r.clone()));
                        }
                        self.rows.delete(&key, suffix)?;
                    }
                    i = j;
                }
                self.firsts.delete(&[], &firsts_key)?;
                if i < held.len() {
                    let mut first = Vec::new();
                    keys::encode_key_datum(&held[i].2[self.time], &mut first)?;
                    self.firsts
                        .put(&[], &Self::firsts_key(&first, &key), key.clone())?;
                }
            }
        }
        // The earliest time still held.
        let mut earliest = None;
        let types = self.types.clone();
        let time = self.time;
        let mut first_key = None;
        self.firsts.scan_ordered(&[], false, |_, key| {
            first_key = Some(key.to_vec());
            Ok(false)
        })?;
        if let Some(key) = first_key {
            self.rows.scan_ordered(&key, false, |_, value| {
                if let Ok(r) = row::decode_row(&value[8..], &types) {
                    earliest = micros(&r[time]);
                }
                Ok(false)
            })?;
        }
        let chunk = if out.is_empty() {
            None
        } else {
            Some(StreamChunk::from_rows(&self.output, &out)?)
        };
        Ok((chunk, earliest))
    }

    /// The input watermark on the time column.
    pub fn time_watermark(&self, input: &[Option<ScalarValue>]) -> Option<ScalarValue> {
        input.get(self.time).cloned().flatten()
    }

    /// The output's watermarks: on the time column and `window_start`, the earliest held
    /// time (or the input watermark when nothing is held); on `window_end`, just past the
    /// input watermark; none on other columns (a held row can come out later).
    pub fn output_watermarks(
        &self,
        input: &[Option<ScalarValue>],
        earliest: Option<i64>,
    ) -> Vec<Option<ScalarValue>> {
        let width = self.output.fields().len();
        let mut out = vec![None; width];
        let Some(Some(wm)) = input.get(self.time) else {
            return out;
        };
        let low = match (earliest, micros(wm)) {
            (Some(e), Some(w)) => time_like(wm, e.min(w)),
            _ => wm.clone(),
        };
        out[self.time] = Some(low.clone());
        out[width - 2] = Some(low);
        // Every session still to come ends after the watermark (it is not closed).
        out[width - 1] = micros(wm).map(|w| time_like(wm, w.saturating_add(1)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::temp_alloc;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn ts_type() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", ts_type(), true),
        ]))
    }

    fn output() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", ts_type(), true),
            Field::new("window_start", ts_type(), true),
            Field::new("window_end", ts_type(), true),
        ]))
    }

    fn t(v: i64) -> ScalarValue {
        ScalarValue::TimestampMicrosecond(Some(v), Some("UTC".into()))
    }

    fn rows(pairs: &[(&str, i64)]) -> StreamChunk {
        let rows: Vec<(Op, Vec<ScalarValue>)> = pairs
            .iter()
            .map(|(k, v)| (Op::Insert, vec![ScalarValue::from(*k), t(*v)]))
            .collect();
        StreamChunk::from_rows(&input(), &rows).unwrap()
    }

    fn sessions(c: &Option<StreamChunk>) -> Vec<(String, i64, i64, i64)> {
        let Some(c) = c else { return vec![] };
        let mut v: Vec<(String, i64, i64, i64)> = c
            .rows()
            .unwrap()
            .into_iter()
            .map(|(_, r)| {
                let m = |x: &ScalarValue| micros(x).unwrap();
                (r[0].to_string(), m(&r[1]), m(&r[2]), m(&r[3]))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sessions_close_when_the_watermark_passes_their_end() {
        let (_dir, mut alloc) = temp_alloc();
        let mut s = SessionWindow::try_new(&input(), output(), 1, 10, vec![0], &mut alloc).unwrap();
        // a: 0, 5, 12 (one session, 0..22) then 40 (another); b: 3 (3..13).
        s.apply(&rows(&[("a", 0), ("a", 12), ("b", 3), ("a", 40)]))
            .unwrap();
        s.apply(&rows(&[("a", 5)])).unwrap();
        let (out, earliest) = s.close(Some(&t(20))).unwrap();
        assert_eq!(sessions(&out), vec![("b".into(), 3, 3, 13)]);
        assert_eq!(earliest, Some(0));
        let (out, earliest) = s.close(Some(&t(22))).unwrap();
        assert_eq!(
            sessions(&out),
            vec![
                ("a".into(), 0, 0, 22),
                ("a".into(), 5, 0, 22),
                ("a".into(), 12, 0, 22)
            ]
        );
        assert_eq!(earliest, Some(40));
        // A later row extends the open session; it closes with it.
        s.apply(&rows(&[("a", 45)])).unwrap();
        let (out, earliest) = s.close(Some(&t(60))).unwrap();
        assert_eq!(
            sessions(&out),
            vec![("a".into(), 40, 40, 55), ("a".into(), 45, 40, 55)]
        );
        assert_eq!(earliest, None);
    }
}
