//! Reading and writing the rows of one table.
//!
//! Rows are decoded into [`ScalarValue`]s at this boundary. Batches for DataFusion are built
//! column by column in [`rows_to_batch`].

use std::sync::Arc;

use datafusion::arrow::array::{new_empty_array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ScalarValue;
use strom_catalog::TableDef;

use crate::error::{EngineError, Result};
use crate::keys;
use crate::row;

/// The column types of a table's stored rows, in storage order.
pub fn stored_types(def: &TableDef) -> Vec<DataType> {
    def.columns.iter().map(|c| c.ty.to_arrow()).collect()
}

/// Decodes a stored row value, reporting corruption with the table's name.
pub fn decode(def: &TableDef, types: &[DataType], value: &[u8]) -> Result<Vec<ScalarValue>> {
    row::decode_row(value, types).map_err(|reason| EngineError::Corrupt {
        table: def.name.clone(),
        reason,
    })
}

/// How many times a stored row of a materialized view occurs (its last column).
pub fn view_row_count(def: &TableDef, row: &[ScalarValue]) -> Result<i64> {
    match row.last() {
        Some(ScalarValue::Int64(Some(n))) if *n > 0 => Ok(*n),
        other => Err(EngineError::Corrupt {
            table: def.name.clone(),
            reason: format!("bad row count {other:?}"),
        }),
    }
}

/// The primary key datums of a full row.
pub fn pk_of(def: &TableDef, row: &[ScalarValue]) -> Vec<ScalarValue> {
    def.pk.iter().map(|&i| row[i].clone()).collect()
}

/// The storage key of a full row.
pub fn key_of(def: &TableDef, row: &[ScalarValue]) -> Result<Vec<u8>> {
    Ok(keys::row_key(def.id, &keys::encode_key(&pk_of(def, row))?))
}

/// Renders a key for error messages the way PostgreSQL does: `(a, b)=(1, x)`.
pub fn describe_key(def: &TableDef, pk: &[ScalarValue]) -> String {
    let names: Vec<&str> = def
        .pk
        .iter()
        .map(|&i| def.columns[i].name.as_str())
        .collect();
    let values: Vec<String> = pk.iter().map(|v| v.to_string()).collect();
    format!("{})=({}", names.join(", "), values.join(", "))
}

/// Builds a batch of `schema` from rows; `projection` picks the row positions of the
/// schema's columns.
pub fn rows_to_batch(
    schema: &SchemaRef,
    projection: &[usize],
    rows: &[Vec<ScalarValue>],
) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = projection
        .iter()
        .zip(schema.fields())
        .map(|(&col, field)| {
            if rows.is_empty() {
                return Ok(new_empty_array(field.data_type()));
            }
            let array = ScalarValue::iter_to_array(rows.iter().map(|r| r[col].clone()))?;
            // Lists come back with a default element field; match the schema exactly.
            if array.data_type() != field.data_type() {
                Ok(datafusion::arrow::compute::cast(&array, field.data_type())?)
            } else {
                Ok(array)
            }
        })
        .collect::<Result<_>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}

/// Splits a batch into rows of scalars.
pub fn batch_to_rows(batch: &RecordBatch) -> Result<Vec<Vec<ScalarValue>>> {
    (0..batch.num_rows())
        .map(|r| {
            batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c, r).map_err(Into::into))
                .collect()
        })
        .collect()
}
