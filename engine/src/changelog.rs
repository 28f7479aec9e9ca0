//! The change log between table writes and the stream runtime.
//!
//! A statement that changes rows of a table some view reads records the net change of each
//! row (old and new stored value) as one [`LogEntry`], written in the same RocksDB batch as
//! the rows themselves under `0x02 | seq: u64 BE`, and queued in memory for the runtime.
//! The runtime consumes entries epoch by epoch; the epoch's commit records the last
//! consumed sequence number and deletes the consumed entries in the same batch as the
//! views' new state. After a crash, the entries still in the log are exactly the committed
//! writes the views have not seen yet, so nothing is lost and nothing is applied twice.
//!
//! Rows of sources can also come as whole Arrow batches ([`SourceBatch`]): they are kept
//! in memory as they are and persisted as Arrow IPC, so a generator or file reader hands
//! its columns to the views without turning each row into values and back.

use std::collections::VecDeque;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use strom_catalog::TableId;

use crate::error::{EngineError, Result};
use crate::keys::{LOG_PREFIX, META_PREFIX};
use crate::store::Store;

/// The last log sequence number whose changes are in committed view state.
pub const CONSUMED_KEY: &[u8] = b"\x00log_consumed";

#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub table: TableId,
    /// The row's storage key.
    pub key: Vec<u8>,
    /// Stored value before the statement (`None`: the row did not exist).
    pub old: Option<Vec<u8>>,
    /// Stored value after it (`None`: deleted).
    pub new: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub seq: u64,
    pub changes: Vec<RowChange>,
    /// Watermarks this transaction raised: relation and new value (encoded by
    /// [`crate::watermark::encode`]). Encoded after the changes, and only when there are
    /// any, so entries written before watermarks existed still decode.
    pub watermarks: Vec<(TableId, Vec<u8>)>,
    /// New rows of sources, column-wise. Encoded after the watermarks, only when there
    /// are any (an entry without batches reads as before).
    pub batches: Vec<SourceBatch>,
}

/// New rows of a source as one Arrow batch: its visible columns, in the declared types.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBatch {
    pub table: TableId,
    pub data: RecordBatch,
}

impl LogEntry {
    /// How many row changes the entry holds (batches count their rows).
    pub fn rows(&self) -> usize {
        self.changes.len()
            + self
                .batches
                .iter()
                .map(|b| b.data.num_rows())
                .sum::<usize>()
    }
}

#[derive(Debug)]
pub struct ChangeQueue {
    pub next_seq: u64,
    pub pending: VecDeque<LogEntry>,
}

pub fn log_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(LOG_PREFIX);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The last sequence number whose changes are in committed view state (0: none).
pub fn consumed(store: &Store) -> Result<u64> {
    debug_assert_eq!(CONSUMED_KEY[0], META_PREFIX);
    Ok(match store.get(CONSUMED_KEY)? {
        Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| corrupt("mark"))?),
        None => 0,
    })
}

/// Reads the consumed mark and every unconsumed entry (at start).
pub fn load(store: &Store) -> Result<ChangeQueue> {
    let consumed = consumed(store)?;
    let mut pending = VecDeque::new();
    let mut next_seq = consumed + 1;
    for (k, v) in store.scan_latest(&[LOG_PREFIX], &[LOG_PREFIX + 1])? {
        let entry = decode(&v)?;
        if k.as_ref() != log_key(entry.seq).as_slice() {
            return Err(corrupt("key does not match entry"));
        }
        if entry.seq <= consumed {
            // Cannot happen (consumed entries are deleted in the batch that marks them
            // consumed), but if it did, skipping is what keeps results exactly-once.
            continue;
        }
        next_seq = entry.seq + 1;
        pending.push_back(entry);
    }
    Ok(ChangeQueue { next_seq, pending })
}

/// Records that every entry up to `seq` is in committed view state, and deletes them.
pub fn mark_consumed(batch: &mut rocksdb::WriteBatch, seq: u64) {
    batch.put(CONSUMED_KEY, seq.to_be_bytes());
    batch.delete_range(vec![LOG_PREFIX], log_key(seq + 1));
}

fn corrupt(reason: &str) -> EngineError {
    EngineError::Corrupt {
        table: "change log".into(),
        reason: reason.into(),
    }
}

pub fn encode(entry: &LogEntry) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&entry.seq.to_be_bytes());
    out.extend_from_slice(&(entry.changes.len() as u32).to_be_bytes());
    for c in &entry.changes {
        out.extend_from_slice(&c.table.0.to_be_bytes());
        put_bytes(&mut out, Some(&c.key));
        put_bytes(&mut out, c.old.as_deref());
        put_bytes(&mut out, c.new.as_deref());
    }
    if !entry.watermarks.is_empty() || !entry.batches.is_empty() {
        out.extend_from_slice(&(entry.watermarks.len() as u32).to_be_bytes());
        for (t, v) in &entry.watermarks {
            out.extend_from_slice(&t.0.to_be_bytes());
            put_bytes(&mut out, Some(v));
        }
    }
    if !entry.batches.is_empty() {
        out.extend_from_slice(&(entry.batches.len() as u32).to_be_bytes());
        for b in &entry.batches {
            out.extend_from_slice(&b.table.0.to_be_bytes());
            let mut ipc = Vec::new();
            let mut w = StreamWriter::try_new(&mut ipc, &b.data.schema())?;
            w.write(&b.data)?;
            w.finish()?;
            drop(w);
            put_bytes(&mut out, Some(&ipc));
        }
    }
    Ok(out)
}

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<LogEntry> {
    let mut r = Reader(bytes);
    let seq = u64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let n = r.u32()?;
    let mut changes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let table = TableId(r.u32()?);
        let key = r.bytes()?.ok_or_else(|| corrupt("missing key"))?;
        let old = r.bytes()?;
        let new = r.bytes()?;
        changes.push(RowChange {
            table,
            key,
            old,
            new,
        });
    }
    let mut watermarks = Vec::new();
    if !r.0.is_empty() {
        let n = r.u32()?;
        for _ in 0..n {
            let table = TableId(r.u32()?);
            let v = r.bytes()?.ok_or_else(|| corrupt("missing watermark"))?;
            watermarks.push((table, v));
        }
    }
    let mut batches = Vec::new();
    if !r.0.is_empty() {
        let n = r.u32()?;
        for _ in 0..n {
            let table = TableId(r.u32()?);
            let ipc = r.bytes()?.ok_or_else(|| corrupt("missing batch"))?;
            let reader = StreamReader::try_new(ipc.as_slice(), None)?;
            for data in reader {
                batches.push(SourceBatch { table, data: data? });
            }
        }
    }
    if !r.0.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(LogEntry {
        seq,
        changes,
        watermarks,
        batches,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated entry"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<Option<Vec<u8>>> {
        match self.take(1)?[0] {
            0 => Ok(None),
            1 => {
                let n = self.u32()? as usize;
                Ok(Some(self.take(n)?.to_vec()))
            }
            _ => Err(corrupt("bad presence tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_truncation() {
        let e = LogEntry {
            seq: 7,
            changes: vec![
                RowChange {
                    table: TableId(3),
                    key: vec![1, 2],
                    old: None,
                    new: Some(vec![9]),
                },
                RowChange {
                    table: TableId(4),
                    key: vec![],
                    old: Some(vec![]),
                    new: None,
                },
            ],
            watermarks: vec![(TableId(3), vec![1, 2, 3])],
            batches: Vec::new(),
        };
        let b = encode(&e).unwrap();
        assert_eq!(decode(&b).unwrap(), e);
        assert!(decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn source_batches_round_trip_with_and_without_watermarks() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        let data = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("x"), Some(""), None])),
            ],
        )
        .unwrap();
        for watermarks in [vec![], vec![(TableId(5), vec![7])]] {
            let e = LogEntry {
                seq: 9,
                changes: Vec::new(),
                watermarks,
                batches: vec![
                    SourceBatch {
                        table: TableId(5),
                        data: data.clone(),
                    },
                    SourceBatch {
                        table: TableId(6),
                        data: data.slice(1, 2),
                    },
                ],
            };
            let b = encode(&e).unwrap();
            let back = decode(&b).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.rows(), 5);
            assert!(decode(&b[..b.len() - 3]).is_err());
        }
    }
}
