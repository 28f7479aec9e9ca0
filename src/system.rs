//! `strom_catalog`: Strom's own system relations, read like tables.
//!
//! - `strom_catalog.backfill_progress`: one row per materialized view created since the
//!   server started (or redeployed at start): how many input rows its backfill has read
//!   and whether it is done. A view still backfilling is being filled from its inputs'
//!   existing contents; `CREATE MATERIALIZED VIEW` returns when `done` turns true.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::Result as DfResult;

use crate::query::QueryEnv;

pub const SCHEMA: &str = "strom_catalog";

const TABLES: &[&str] = &["backfill_progress"];

#[derive(Debug)]
pub struct StromCatalogSchema {
    env: Arc<QueryEnv>,
}

impl StromCatalogSchema {
    pub fn new(env: Arc<QueryEnv>) -> Self {
        StromCatalogSchema { env }
    }

    fn backfill_progress(&self) -> DfResult<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("view_id", DataType::Int64, false),
            Field::new("schema_name", DataType::Utf8, true),
            Field::new("view_name", DataType::Utf8, false),
            Field::new("rows_read", DataType::Int64, false),
            Field::new("done", DataType::Boolean, false),
        ]));
        let cat = &self.env.catalog;
        let b = &self.env.backfills;
        let schema_of = |id| {
            cat.table(id)
                .and_then(|t| cat.schema(t.schema))
                .map(|s| s.name.clone())
        };
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                b.iter().map(|s| s.view.0 as i64),
            )),
            Arc::new(StringArray::from_iter(b.iter().map(|s| schema_of(s.view)))),
            Arc::new(StringArray::from_iter_values(b.iter().map(|s| &s.name))),
            Arc::new(Int64Array::from_iter_values(
                b.iter().map(|s| s.rows_read as i64),
            )),
            Arc::new(BooleanArray::from_iter(b.iter().map(|s| Some(s.done)))),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[async_trait]
impl SchemaProvider for StromCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let batch = match name {
            "backfill_progress" => self.backfill_progress()?,
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
