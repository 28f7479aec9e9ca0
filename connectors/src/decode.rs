//! Message payloads to rows: `ENCODE JSON` ([`JsonDecoder`]) and `ENCODE CSV`
//! ([`CsvDecoder`]), behind [`PayloadDecoder`].
//!
//! A poll's payloads are decoded together by arrow-json's tape decoder straight into Arrow
//! columns of the declared types (no `serde_json::Value` per message). Fields that are not
//! columns are ignored, missing fields are NULL, numbers and booleans are accepted for text
//! columns. When the batch fails (a message is not a JSON object, a value does not fit its
//! column) or yields more or fewer rows than messages, each message is decoded alone, so
//! that the good ones are kept and each bad one gets its own reason.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::json::ReaderBuilder;

/// How each message of a poll came out.
pub enum Decoded {
    /// One row per message, in order.
    All(RecordBatch),
    /// Per message: its one-row batch, or why it could not be decoded.
    Each(Vec<Result<RecordBatch, String>>),
}

pub struct JsonDecoder {
    schema: SchemaRef,
    /// Columns that may not be NULL (`NOT NULL`, primary key), by index in `schema`.
    required: Vec<usize>,
}

impl JsonDecoder {
    pub fn new(schema: Schema, required: Vec<usize>) -> Self {
        JsonDecoder {
            schema: Arc::new(schema),
            required,
        }
    }

    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let mut decoder = ReaderBuilder::new(Arc::clone(&self.schema))
            .with_strict_mode(false)
            .with_coerce_primitive(true)
            // One more than expected, so a message holding two values shows up.
            .with_batch_size(payloads.len() + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for (i, p) in payloads.iter().enumerate() {
            let mut rest: &[u8] = p;
            while !rest.is_empty() {
                let n = decoder.decode(rest).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("more JSON values than messages".into());
                }
                rest = &rest[n..];
            }
            decoder.decode(b"\n").map_err(|e| e.to_string())?;
            // Each message must end with exactly one complete value, so an incomplete
            // message never joins the next one and rows stay aligned with messages.
            if decoder.has_partial_record() || decoder.len() != i + 1 {
                return Err(if decoder.has_partial_record() {
                    "incomplete JSON value".into()
                } else {
                    format!("{} JSON values in one message", decoder.len() - i)
                });
            }
        }
        let batch = decoder
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema)));
        check_required(&batch, &self.required)?;
        Ok(batch)
    }
}

/// `ENCODE CSV (delimiter = ',', without_header = 'true')`: each message is one record,
/// fields in column order; with `without_header = 'false'` a message that is the header
/// line (the column names) is skipped.
pub struct CsvDecoder {
    schema: SchemaRef,
    delimiter: u8,
    skip_header: Option<String>,
    required: Vec<usize>,
}

impl CsvDecoder {
    pub fn new(schema: Schema, required: Vec<usize>, delimiter: u8, with_header: bool) -> Self {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let skip_header = with_header.then(|| names.join(&(delimiter as char).to_string()));
        CsvDecoder {
            schema: Arc::new(schema),
            delimiter,
            skip_header,
            required,
        }
    }

    /// True for a message that is the header line.
    pub fn is_header(&self, payload: &[u8]) -> bool {
        self.skip_header.as_deref().is_some_and(|h| {
            std::str::from_utf8(payload).is_ok_and(|p| p.trim_end_matches(['\r', '\n']) == h)
        })
    }

    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        let mut decoder = arrow::csv::ReaderBuilder::new(Arc::clone(&self.schema))
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(payloads.len() + 1)
            .build_decoder();
        for p in payloads {
            let trimmed = p.strip_suffix(b"\n").unwrap_or(p);
            if trimmed.contains(&b'\n') {
                return Err("a CSV message holds more than one line".into());
            }
            for part in [trimmed, b"\n".as_slice()] {
                let mut rest = part;
                while !rest.is_empty() {
                    let n = decoder.decode(rest).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("more CSV records than messages".into());
                    }
                    rest = &rest[n..];
                }
            }
        }
        let batch = decoder
            .flush()
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema)));
        check_required(&batch, &self.required)?;
        Ok(batch)
    }
}

/// An error naming the first required column (by index) with a NULL in `batch`.
fn check_required(batch: &RecordBatch, required: &[usize]) -> Result<(), String> {
    match required.iter().find(|&&c| batch.column(c).null_count() > 0) {
        Some(&c) => Err(format!(
            "missing value for required column \"{}\"",
            batch.schema().field(c).name()
        )),
        None => Ok(()),
    }
}

/// The decoder of a source's payloads.
pub enum PayloadDecoder {
    Json(JsonDecoder),
    Csv(CsvDecoder),
}

impl PayloadDecoder {
    fn decode_all(&self, payloads: &[&[u8]]) -> Result<RecordBatch, String> {
        match self {
            PayloadDecoder::Json(d) => d.decode_all(payloads),
            PayloadDecoder::Csv(d) => d.decode_all(payloads),
        }
    }

    /// Decodes the payloads of one poll: in one pass when all are good, else one by one.
    pub fn decode(&self, payloads: &[&[u8]]) -> Decoded {
        if let Ok(batch) = self.decode_all(payloads) {
            if batch.num_rows() == payloads.len() {
                return Decoded::All(batch);
            }
        }
        Decoded::Each(
            payloads
                .iter()
                .map(|p| {
                    if std::str::from_utf8(p).is_err() {
                        return Err("payload is not UTF-8".to_string());
                    }
                    match self.decode_all(&[p]) {
                        Ok(b) if b.num_rows() == 1 => Ok(b),
                        Ok(b) if b.num_rows() == 0 => Err("empty payload".to_string()),
                        Ok(b) => Err(format!(
                            "payload holds {} values; one record is expected",
                            b.num_rows()
                        )),
                        Err(e) => Err(e),
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Float64Type, TimeUnit};

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(
            Schema::new(vec![
                Field::new("meter_id", DataType::Utf8, false),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    true,
                ),
                Field::new("kw", DataType::Float64, true),
            ]),
            vec![0],
        )
    }

    #[test]
    fn good_batches_decode_in_one_pass() {
        let msgs: Vec<&[u8]> = vec![
            br#"{"meter_id": "M1", "ts": "2024-03-01T10:00:00Z", "kw": 1.5, "extra": [1]}"#,
            br#"{"kw": 2, "meter_id": 7}"#,
        ];
        let Decoded::All(b) = PayloadDecoder::Json(decoder()).decode(&msgs) else {
            panic!("expected one batch")
        };
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.column(0).as_string::<i32>().value(1), "7");
        assert_eq!(b.column(2).as_primitive::<Float64Type>().value(1), 2.0);
        assert!(b.column(1).is_null(1));
    }

    #[test]
    fn bad_messages_get_their_own_reason() {
        let msgs: Vec<&[u8]> = vec![
            br#"{"meter_id": "M1", "kw": 1}"#,
            b"not json",
            br#"{"meter_id": "M2", "kw": "lots"}"#,
            br#"{"kw": 3}"#,
            br#"{"meter_id": "A"} {"meter_id": "B"}"#,
            b"\xff\xfe",
            br#"{"meter_id": "M3"}"#,
        ];
        let Decoded::Each(each) = PayloadDecoder::Json(decoder()).decode(&msgs) else {
            panic!("expected per-message results")
        };
        let ok: Vec<bool> = each.iter().map(Result::is_ok).collect();
        assert_eq!(ok, vec![true, false, false, false, false, false, true]);
        assert!(each[3].as_ref().unwrap_err().contains("meter_id"));
        assert!(
            each[4].as_ref().unwrap_err().contains("2 JSON values"),
            "{:?}",
            each[4]
        );
        // Halves of values in consecutive messages never join, even when the count of
        // rows would come out right.
        let split: Vec<&[u8]> = vec![
            br#"{"meter_id": "A", "kw":"#,
            b"1}",
            br#"{"meter_id": "B"} {"meter_id": "C"}"#,
        ];
        let Decoded::Each(each) = PayloadDecoder::Json(decoder()).decode(&split) else {
            panic!("expected per-message results")
        };
        assert!(each.iter().all(Result::is_err));
    }

    #[test]
    fn csv_records_decode_and_bad_ones_are_singled_out() {
        let d = PayloadDecoder::Csv(CsvDecoder::new(
            Schema::new(vec![
                Field::new("meter_id", DataType::Utf8, false),
                Field::new("kw", DataType::Float64, true),
            ]),
            vec![0],
            b'|',
            true,
        ));
        let PayloadDecoder::Csv(csv) = &d else {
            unreachable!()
        };
        assert!(csv.is_header(b"meter_id|kw\n"));
        let msgs: Vec<&[u8]> = vec![b"M1|1.5", b"M2|\n", b"M3|x", b"a|1\nb|2", b"M4|2"];
        let Decoded::Each(each) = d.decode(&msgs) else {
            panic!("expected per-message results")
        };
        let ok: Vec<bool> = each.iter().map(Result::is_ok).collect();
        assert_eq!(ok, vec![true, true, false, false, true]);
        let good: Vec<&[u8]> = vec![b"M1|1.5", b"M2|2"];
        let Decoded::All(b) = d.decode(&good) else {
            panic!("expected one batch")
        };
        assert_eq!(b.column(1).as_primitive::<Float64Type>().value(1), 2.0);
    }
}
