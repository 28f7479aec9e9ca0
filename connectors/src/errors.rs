//! Source bookkeeping kept in the store next to the rows: each partition's next offset,
//! and the messages a source rejected.
//!
//! ```text
//! 0x00 "src_offset" | source: u32 BE | topic | 0x00 | partition: i32 BE  -> next offset: i64 BE
//! 0x00 "src_reject" | source: u32 BE | topic | 0x00 | partition: i32 BE | offset: i64 BE -> JSON
//!
//! (Kafka topic names never contain 0x00.)
//! ```
//!
//! Both are written in the transaction that writes the rows of the same poll, so they are
//! exactly as durable as the rows. Rejections are read by `strom_catalog.source_errors`.

use serde::{Deserialize, Serialize};
use strom_catalog::TableId;
use strom_engine::keys::{prefix_successor, META_PREFIX};
use strom_engine::{Snapshot, WriteTxn};

/// At most this much of a rejected payload is kept.
pub const MAX_KEPT_PAYLOAD: usize = 4096;

const OFFSET_TAG: &[u8] = b"src_offset";
const REJECT_TAG: &[u8] = b"src_reject";

fn key(tag: &[u8], source: TableId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + tag.len() + 16);
    k.push(META_PREFIX);
    k.extend_from_slice(tag);
    k.extend_from_slice(&source.0.to_be_bytes());
    k
}

fn partition_key(tag: &[u8], source: TableId, topic: &str, partition: i32) -> Vec<u8> {
    let mut k = key(tag, source);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// The next offset to read of a partition, as last committed.
pub fn committed_offset(
    snapshot: &Snapshot,
    source: TableId,
    topic: &str,
    partition: i32,
) -> strom_engine::Result<Option<i64>> {
    Ok(snapshot
        .get(&partition_key(OFFSET_TAG, source, topic, partition))?
        .and_then(|b| b.as_slice().try_into().ok().map(i64::from_be_bytes)))
}

/// Every committed partition offset of a source: (topic, partition, next offset).
pub fn committed_offsets(
    snapshot: &Snapshot,
    source: TableId,
) -> strom_engine::Result<Vec<(String, i32, i64)>> {
    let lo = key(OFFSET_TAG, source);
    let hi = prefix_successor(&lo).expect("starts with 0x00");
    Ok(snapshot
        .scan(&lo, &hi, usize::MAX)?
        .into_iter()
        .filter_map(|(k, v)| {
            let rest = &k[lo.len()..];
            let nul = rest.iter().position(|&b| b == 0)?;
            let topic = String::from_utf8_lossy(&rest[..nul]).into_owned();
            let p = i32::from_be_bytes(rest[nul + 1..].try_into().ok()?);
            let o = i64::from_be_bytes(v.as_ref().try_into().ok()?);
            Some((topic, p, o))
        })
        .collect())
}

pub fn stage_offset(
    txn: &mut WriteTxn<'_>,
    source: TableId,
    topic: &str,
    partition: i32,
    next: i64,
) {
    txn.put_raw(
        partition_key(OFFSET_TAG, source, topic, partition),
        next.to_be_bytes().to_vec(),
    );
}

/// Stages forgetting one partition's offset (a file that left the directory).
pub fn stage_forget_offset(txn: &mut WriteTxn<'_>, source: TableId, topic: &str, partition: i32) {
    txn.delete_raw(partition_key(OFFSET_TAG, source, topic, partition), None);
}

/// A message a source could not turn into a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    #[serde(default)]
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    /// The payload, cut to [`MAX_KEPT_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
}

pub fn stage_rejection(txn: &mut WriteTxn<'_>, source: TableId, r: &Rejected) {
    let mut k = partition_key(REJECT_TAG, source, &r.topic, r.partition);
    k.extend_from_slice(&r.offset.to_be_bytes());
    let mut kept = r.clone();
    kept.payload.truncate(MAX_KEPT_PAYLOAD);
    let value = serde_json::to_vec(&kept).expect("plain struct serializes");
    txn.put_raw(k, value);
}

/// Every kept rejection of a source, by topic, partition and offset.
pub fn rejections(snapshot: &Snapshot, source: TableId) -> strom_engine::Result<Vec<Rejected>> {
    let lo = key(REJECT_TAG, source);
    let hi = prefix_successor(&lo).expect("starts with 0x00");
    Ok(snapshot
        .scan(&lo, &hi, usize::MAX)?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// Stages the removal of a source's offsets and rejections (DROP).
pub fn stage_forget(txn: &mut WriteTxn<'_>, source: TableId) {
    for tag in [OFFSET_TAG, REJECT_TAG] {
        let lo = key(tag, source);
        let hi = prefix_successor(&lo).expect("starts with 0x00");
        txn.delete_raw(lo, Some(hi));
    }
}
