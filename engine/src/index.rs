//! Secondary indexes (`CREATE INDEX name ON relation (columns)`), which temporal joins
//! look dimension rows up by when the join key is not the primary key.
//!
//! An index entry is `0x04 | table | index | memcomparable(index columns) |
//! memcomparable(primary key)` with an empty value ([`crate::keys::index_prefix`]): the
//! rows with a given index key are a prefix scan away, in primary key order. Entries are
//! written in the same RocksDB batch as the rows they describe (table writes at
//! `WriteTxn::commit`, and rows a watermark's TTL expires; view contents at the epoch's
//! commit), so an index is never behind its relation. Readers still check that
//! the row they reach has the key they asked for, so a stray entry can cost a read but
//! never a wrong row.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use strom_catalog::{IndexDef, TableDef, TableId};

use crate::error::Result;
use crate::keys;
use crate::store::Snapshot;
use crate::table;

/// A key write: `None` deletes.
pub type KeyWrite = (Vec<u8>, Option<Vec<u8>>);

/// The index entry of a row (its full values, in storage order) stored under `row_key`.
pub fn entry_key(
    table: TableId,
    index: &IndexDef,
    row: &[ScalarValue],
    row_key: &[u8],
) -> Result<Vec<u8>> {
    let values: Vec<ScalarValue> = index.columns.iter().map(|&c| row[c].clone()).collect();
    let mut k = keys::index_prefix(table, index.id, &keys::encode_key(&values)?);
    k.extend_from_slice(keys::pk_part(row_key));
    Ok(k)
}

/// `[lo, hi)` of one index's entries, or of all the table's with `index = None`.
pub fn range(table: TableId, index: Option<u32>) -> (Vec<u8>, Vec<u8>) {
    let mut lo = vec![keys::INDEX_PREFIX];
    lo.extend_from_slice(&table.0.to_be_bytes());
    if let Some(i) = index {
        lo.extend_from_slice(&i.to_be_bytes());
    }
    let hi = keys::prefix_successor(&lo).expect("invariant: starts with 0x04");
    (lo, hi)
}

/// The index writes that keep `def`'s indexes in step with the row under `row_key` going
/// from `old` to `new` (stored values; `None`: absent).
pub fn maintain(
    def: &TableDef,
    types: &[DataType],
    row_key: &[u8],
    old: Option<&[u8]>,
    new: Option<&[u8]>,
    out: &mut Vec<KeyWrite>,
) -> Result<()> {
    if def.indexes.is_empty() || old == new {
        return Ok(());
    }
    let old = old.map(|v| table::decode(def, types, v)).transpose()?;
    let new = new.map(|v| table::decode(def, types, v)).transpose()?;
    for index in &def.indexes {
        let old_key = old
            .as_ref()
            .map(|r| entry_key(def.id, index, r, row_key))
            .transpose()?;
        let new_key = new
            .as_ref()
            .map(|r| entry_key(def.id, index, r, row_key))
            .transpose()?;
        if old_key == new_key {
            continue;
        }
        if let Some(k) = old_key {
            out.push((k, None));
        }
        if let Some(k) = new_key {
            out.push((k, Some(Vec::new())));
        }
    }
    Ok(())
}

/// The entries of a new index over the rows `def` has at `snapshot`.
pub fn build(snapshot: &Snapshot, def: &TableDef, index: &IndexDef) -> Result<Vec<Vec<u8>>> {
    let types = table::stored_types(def);
    let lo = keys::table_prefix(def.id);
    let hi = keys::prefix_successor(&lo).expect("invariant: starts with 0x01");
    let mut out = Vec::new();
    let mut error = None;
    snapshot.for_each(&lo, &hi, |k, v| {
        if error.is_some() {
            return;
        }
        match table::decode(def, &types, v).and_then(|row| entry_key(def.id, index, &row, k)) {
            Ok(e) => out.push(e),
            Err(e) => error = Some(e),
        }
    })?;
    match error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
