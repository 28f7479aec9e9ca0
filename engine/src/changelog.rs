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
//!
//! A source that can make the same rows again (a generator: rows are a function of their
//! number) persists a batch *by reference* instead ([`Replay`]): a token of its own
//! choosing and the watermark the rows were judged against. Only the in-memory entry
//! holds the rows; after a restart, [`load`] asks the connector's registered
//! [`Replayer`] to make them again from the token, and sets late rows aside exactly as
//! the first time, so the entry is what it was. The log then writes a few bytes per
//! batch instead of its payload.

use std::collections::VecDeque;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use strom_catalog::{Catalog, TableDef, TableId};

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
    /// Sources whose rows logged by reference could not be made again at this start,
    /// with why (never encoded: [`load`] finds it). The views reading them fail with
    /// that reason instead of silently missing the rows; the rest of the database runs.
    pub lost: Vec<(TableId, String)>,
}

/// New rows of a source as one Arrow batch: its visible columns, in the declared types.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceBatch {
    pub table: TableId,
    pub data: RecordBatch,
    /// Persisted by reference (see the module docs); `None`: persisted as Arrow IPC.
    pub replay: Option<Replay>,
}

/// How a batch persisted by reference is made again.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The connector's description of the rows (for a generator: their numbers).
    pub token: Vec<u8>,
    /// The relation's watermark before the transaction ([`crate::watermark::encode`]),
    /// which rows earlier than were set aside as late: `None` when it had none.
    pub watermark: Option<Vec<u8>>,
    /// Columns (visible positions) no view read when the rows were made, left NULL in
    /// the batch instead of decoded ([`crate::Database::columns_read`]); a view that
    /// reads one gets the batch made again whole ([`remake`]). Never persisted: a batch
    /// made again at start is whole.
    pub left_out: Vec<usize>,
}

/// Makes the rows of a batch again from its [`Replay::token`]: the visible columns of
/// the relation, exactly the rows it made the first time (before late rows were set
/// aside). Registered per connector by [`register_replayer`].
pub type Replayer = fn(&TableDef, &[u8]) -> std::result::Result<RecordBatch, String>;

static REPLAYERS: std::sync::Mutex<Vec<(&'static str, Replayer)>> =
    std::sync::Mutex::new(Vec::new());

/// Installs the replayer of batches persisted by reference by `connector` sources.
/// Must happen before [`crate::Database::open`] reads the log.
pub fn register_replayer(connector: &'static str, replayer: Replayer) {
    let mut r = REPLAYERS
        .lock()
        .expect("invariant: replayer lock is never poisoned");
    r.retain(|(c, _)| *c != connector);
    r.push((connector, replayer));
}

/// Checks that `data` holds `def`'s visible columns in their declared types (what a
/// source batch must be), saying what differs.
pub fn check_columns(def: &TableDef, data: &RecordBatch) -> std::result::Result<(), String> {
    let want: Vec<_> = def
        .visible_columns()
        .map(|(_, c)| c.ty.to_arrow())
        .collect();
    let got: Vec<_> = data
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    if want == got {
        Ok(())
    } else {
        Err(format!(
            "a batch of \"{}\" must hold its visible columns ({want:?}), not {got:?}",
            def.name
        ))
    }
}

fn replayer(connector: &str) -> Option<Replayer> {
    REPLAYERS
        .lock()
        .expect("invariant: replayer lock is never poisoned")
        .iter()
        .find(|(c, _)| *c == connector)
        .map(|(_, r)| *r)
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

/// Reads the consumed mark and every unconsumed entry (at start), making the batches
/// persisted by reference again (see [`Replay`]).
pub fn load(store: &Store, catalog: &Catalog) -> Result<ChangeQueue> {
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
        let mut entry = entry;
        replay_batches(&mut entry, catalog)?;
        for (table, reason) in &entry.lost {
            tracing::error!(seq = entry.seq, table = table.0, "{reason}");
        }
        pending.push_back(entry);
    }
    Ok(ChangeQueue { next_seq, pending })
}

/// Makes an entry's batches persisted by reference again, set apart from late rows as
/// they were at commit. A batch of a relation dropped since is no longer wanted.
fn replay_batches(entry: &mut LogEntry, catalog: &Catalog) -> Result<()> {
    let mut batches = Vec::with_capacity(entry.batches.len());
    for mut b in std::mem::take(&mut entry.batches) {
        let Some(replay) = &b.replay else {
            batches.push(b);
            continue;
        };
        let Some(def) = catalog.table(b.table) else {
            continue;
        };
        let data = match remake(def, replay) {
            Ok(data) => data,
            Err(e) => {
                if !entry.lost.iter().any(|(t, _)| *t == b.table) {
                    entry.lost.push((
                        b.table,
                        format!(
                            "rows of source \"{}\" in change-log entry {} were logged by reference and cannot be made again: {e}",
                            def.name, entry.seq
                        ),
                    ));
                }
                continue;
            }
        };
        if data.num_rows() > 0 {
            b.data = data;
            batches.push(b);
        }
    }
    entry.batches = batches;
    Ok(())
}

/// A batch logged by reference, made again whole by its source's replayer and checked
/// against the source's columns: the rows as they were made, late ones included.
pub fn make_whole(def: &TableDef, replay: &Replay) -> std::result::Result<RecordBatch, String> {
    let connector = def
        .connector
        .as_ref()
        .and_then(|c| c.options.get("connector"))
        .map(String::as_str)
        .unwrap_or("");
    let make = replayer(connector)
        .ok_or_else(|| format!("no replayer is registered for connector \"{connector}\""))?;
    let data = make(def, &replay.token)?;
    check_columns(def, &data)?;
    Ok(data)
}

/// A batch logged by reference, made again whole ([`make_whole`]) and set apart from its
/// late rows as at commit: rows behind the watermark from before the transaction (or
/// with no event time) were set aside, not logged.
pub fn remake(def: &TableDef, replay: &Replay) -> std::result::Result<RecordBatch, String> {
    let mut data = make_whole(def, replay)?;
    let text = |e: EngineError| e.to_string();
    if let Some(marker) = crate::watermark::Watermarker::new(def).map_err(text)? {
        let ty = def.columns[marker.column()].ty.to_arrow();
        let current = replay
            .watermark
            .as_ref()
            .map(|wm| crate::watermark::decode(wm, &ty))
            .transpose()
            .map_err(text)?;
        let split = marker.split_batch(&data, current.as_ref()).map_err(text)?;
        if let Some(keep) = &split.on_time {
            data = datafusion::arrow::compute::filter_record_batch(&data, keep)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(data)
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
            if let Some(replay) = &b.replay {
                // Tag 2 (after `put_bytes`' 0 and 1): the batch by reference.
                out.push(REPLAY_TAG);
                put_bytes(&mut out, Some(&replay.token));
                put_bytes(&mut out, replay.watermark.as_deref());
                continue;
            }
            // As `put_bytes` would write it, but encoded in place: the IPC bytes of a file's
            // batch are megabytes, and growing a buffer of their own and copying it here
            // was a tenth of the CPU of reading a CSV file.
            // (A slice of a larger batch reports its whole buffers' size: capped.)
            out.reserve(b.data.get_array_memory_size().min(64 << 20) + 1024);
            out.push(1);
            let len_at = out.len();
            out.extend_from_slice(&[0; 4]);
            let mut w = StreamWriter::try_new(&mut out, &b.data.schema())?;
            w.write(&b.data)?;
            w.finish()?;
            drop(w);
            let len = u32::try_from(out.len() - len_at - 4).map_err(|_| {
                EngineError::Internal("a source batch of 4 GiB or more in one entry".into())
            })?;
            out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(out)
}

/// Marks a batch persisted by reference (a batch's bytes otherwise start with
/// [`put_bytes`]' presence tag 1).
const REPLAY_TAG: u8 = 2;

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
            if r.0.first() == Some(&REPLAY_TAG) {
                r.take(1)?;
                let token = r.bytes()?.ok_or_else(|| corrupt("missing replay token"))?;
                let watermark = r.bytes()?;
                // The rows are made again by `load`.
                batches.push(SourceBatch {
                    table,
                    data: RecordBatch::new_empty(std::sync::Arc::new(
                        datafusion::arrow::datatypes::Schema::empty(),
                    )),
                    replay: Some(Replay {
                        token,
                        watermark,
                        left_out: Vec::new(),
                    }),
                });
                continue;
            }
            let ipc = r.bytes()?.ok_or_else(|| corrupt("missing batch"))?;
            let reader = StreamReader::try_new(ipc.as_slice(), None)?;
            for data in reader {
                batches.push(SourceBatch {
                    table,
                    data: data?,
                    replay: None,
                });
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
        lost: Vec::new(),
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
            lost: Vec::new(),
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
                        replay: None,
                    },
                    SourceBatch {
                        table: TableId(6),
                        data: data.slice(1, 2),
                        replay: None,
                    },
                ],
                lost: Vec::new(),
            };
            let b = encode(&e).unwrap();
            let back = decode(&b).unwrap();
            assert_eq!(back, e);
            assert_eq!(back.rows(), 5);
            assert!(decode(&b[..b.len() - 3]).is_err());
        }
    }

    /// A source of one BIGINT column `n` fed by `connector`.
    fn source(catalog: &mut Catalog, name: &str, connector: &str) -> TableId {
        use strom_catalog::{ColumnDef, ConnectorDef, SqlType};
        let schema = catalog.schema_by_name("public").unwrap().id;
        let def = TableDef {
            id: TableId(0),
            schema,
            name: name.into(),
            columns: vec![ColumnDef {
                name: "n".into(),
                ty: SqlType::BigInt,
                nullable: true,
                default: None,
                hidden: false,
            }],
            pk: vec![],
            user_pk: false,
            view: None,
            connector: Some(ConnectorDef {
                is_source: true,
                is_sink: false,
                options: [("connector".to_string(), connector.to_string())].into(),
                format: String::new(),
                encode: String::new(),
                encode_options: Default::default(),
                includes: Vec::new(),
            }),
            watermark: None,
            indexes: Vec::new(),
            next_index_id: 0,
        };
        catalog.create_table(def).unwrap()
    }

    #[test]
    fn batches_by_reference_are_made_again_or_reported_lost_at_load() {
        use datafusion::arrow::array::{Array, Int64Array};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        // Rows first..last of a counter, the token being the two numbers as bytes.
        register_replayer("test_counter", |_, token| {
            let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
            let col = Int64Array::from_iter_values(token[0] as i64..token[1] as i64);
            RecordBatch::try_new(schema, vec![Arc::new(col)]).map_err(|e| e.to_string())
        });
        let mut catalog = Catalog::new();
        let counted = source(&mut catalog, "counted", "test_counter");
        let orphan = source(&mut catalog, "orphan", "test_unregistered");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let by_reference = |table, token: Vec<u8>| SourceBatch {
            table,
            data: RecordBatch::new_empty(Arc::new(datafusion::arrow::datatypes::Schema::empty())),
            replay: Some(Replay {
                token,
                watermark: None,
                left_out: Vec::new(),
            }),
        };
        let entry = LogEntry {
            seq: 1,
            changes: Vec::new(),
            watermarks: Vec::new(),
            batches: vec![
                by_reference(counted, vec![3, 7]),
                by_reference(orphan, vec![0, 1]),
            ],
            lost: Vec::new(),
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(log_key(1), encode(&entry).unwrap());
        store.write(batch).unwrap();
        // The database still opens: the orphan's rows are reported lost, not skipped.
        let queue = load(&store, &catalog).unwrap();
        let e = &queue.pending[0];
        assert_eq!(e.batches.len(), 1);
        let made = e.batches[0].data.column(0);
        let made = made.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(made.values().to_vec(), vec![3, 4, 5, 6]);
        assert_eq!(e.lost.len(), 1);
        assert_eq!(e.lost[0].0, orphan);
        assert!(
            e.lost[0].1.contains("\"orphan\"") && e.lost[0].1.contains("test_unregistered"),
            "{}",
            e.lost[0].1
        );
    }
}
