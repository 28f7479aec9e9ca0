//! The sink log: a sink's changes, written by the stream runtime in the epoch's commit and
//! read, delivered and deleted by the sink's delivery task.
//!
//! ```text
//! 0x00 "sink_log" | sink: u32 BE | epoch: u64 BE  ->  [op: u8][len: u32 BE][row]...
//! ```
//!
//! Writing the log in the epoch's batch makes a sink's output exactly-once *into the log*;
//! the delivery task removes an entry only after the external system acknowledged all of
//! it, so nothing is lost across crashes (what reaches the external system twice depends
//! on its delivery mode).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use strom_catalog::TableId;

use crate::error::{EngineError, Result};
use crate::keys::{prefix_successor, META_PREFIX};
use crate::stream::chunk::Op;

const TAG: &[u8] = b"sink_log";
const IDENTITY_TAG: &[u8] = b"sink_identity";

/// The key range of a sink's log.
pub fn range(sink: TableId) -> (Vec<u8>, Vec<u8>) {
    let mut lo = Vec::with_capacity(1 + TAG.len() + 4);
    lo.push(META_PREFIX);
    lo.extend_from_slice(TAG);
    lo.extend_from_slice(&sink.0.to_be_bytes());
    let hi = prefix_successor(&lo).expect("starts with 0x00");
    (lo, hi)
}

/// The key of a sink's identity: a random token made when the sink first delivers, which
/// names its Kafka transactional id and progress group. A sink made again under the same
/// id, or a database made again in a fresh data directory, gets a new token, so it never
/// mistakes an earlier sink's progress in the broker for its own.
pub fn identity_key(sink: TableId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + IDENTITY_TAG.len() + 4);
    k.push(META_PREFIX);
    k.extend_from_slice(IDENTITY_TAG);
    k.extend_from_slice(&sink.0.to_be_bytes());
    k
}

pub fn key(sink: TableId, epoch: u64) -> Vec<u8> {
    let mut k = range(sink).0;
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn op_code(op: Op) -> u8 {
    match op {
        Op::Insert => 0,
        Op::Delete => 1,
        Op::UpdateDelete => 2,
        Op::UpdateInsert => 3,
    }
}

/// Encodes one epoch's changes.
pub fn encode<'a>(changes: impl IntoIterator<Item = (Op, &'a [ScalarValue])>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (op, row) in changes {
        let bytes = crate::row::encode_row(row)?;
        out.push(op_code(op));
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Decodes an entry written by [`encode`] for rows of the given types.
pub fn decode(bytes: &[u8], types: &[DataType]) -> Result<Vec<(Op, Vec<ScalarValue>)>> {
    let corrupt = |reason: String| EngineError::Corrupt {
        table: "sink log".into(),
        reason,
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let op = match bytes[pos] {
            0 => Op::Insert,
            1 => Op::Delete,
            2 => Op::UpdateDelete,
            3 => Op::UpdateInsert,
            b => return Err(corrupt(format!("unknown op {b}"))),
        };
        let len = bytes
            .get(pos + 1..pos + 5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| corrupt("short entry".into()))? as usize;
        let row = bytes
            .get(pos + 5..pos + 5 + len)
            .ok_or_else(|| corrupt("short row".into()))?;
        out.push((op, crate::row::decode_row(row, types).map_err(corrupt)?));
        pos += 5 + len;
    }
    Ok(out)
}

/// The epoch of a log key.
pub fn epoch_of(key: &[u8]) -> Option<u64> {
    key.get(key.len().checked_sub(8)?..)?
        .try_into()
        .ok()
        .map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let rows = [
            vec![ScalarValue::from("F1"), ScalarValue::Int64(Some(3))],
            vec![ScalarValue::from("F2"), ScalarValue::Int64(None)],
        ];
        let bytes = encode([
            (Op::UpdateDelete, rows[0].as_slice()),
            (Op::Insert, rows[1].as_slice()),
        ])
        .unwrap();
        let back = decode(&bytes, &[DataType::Utf8, DataType::Int64]).unwrap();
        assert_eq!(
            back,
            vec![
                (Op::UpdateDelete, rows[0].clone()),
                (Op::Insert, rows[1].clone())
            ]
        );
        assert!(decode(
            &bytes[..bytes.len() - 1],
            &[DataType::Utf8, DataType::Int64]
        )
        .is_err());
        assert_eq!(epoch_of(&key(TableId(7), 42)), Some(42));
    }
}
