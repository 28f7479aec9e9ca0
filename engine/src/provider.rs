//! [`StromTable`]: a DataFusion `TableProvider` over a table's rows at one snapshot, and
//! [`StromScanExec`], the execution plan that streams them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Constraints, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use strom_catalog::TableDef;

use crate::error::EngineError;
use crate::scan_range::{plan_scan, ScanPlan};
use crate::store::{Snapshot, SCAN_STEP};
use crate::table;

/// A table as DataFusion sees it during one statement.
#[derive(Debug)]
pub struct StromTable {
    def: Arc<TableDef>,
    snapshot: Arc<Snapshot>,
    /// Storage positions of the columns this provider exposes.
    columns: Vec<usize>,
    schema: SchemaRef,
    defaults: HashMap<String, Expr>,
    constraints: Option<Constraints>,
}

impl StromTable {
    pub fn def(&self) -> &Arc<TableDef> {
        &self.def
    }

    /// `with_hidden` also exposes the hidden row id (used by UPDATE and DELETE).
    /// `defaults` are the planned `DEFAULT` expressions by column name.
    pub fn new(
        def: Arc<TableDef>,
        snapshot: Arc<Snapshot>,
        with_hidden: bool,
        defaults: HashMap<String, Expr>,
    ) -> Self {
        let (columns, schema) = if with_hidden {
            ((0..def.columns.len()).collect(), def.full_arrow_schema())
        } else {
            (
                def.visible_columns().map(|(i, _)| i).collect(),
                def.visible_arrow_schema(),
            )
        };
        // Every field is declared nullable: NOT NULL is enforced when rows are written, with
        // PostgreSQL's error naming the column, rather than by DataFusion's generic check.
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        // The primary key is not reported to DataFusion as a constraint: its insert planning
        // would then reject NULLs itself, before Strom can name the column (23502).
        let constraints = None;
        StromTable {
            def,
            snapshot,
            columns,
            schema,
            defaults,
            constraints,
        }
    }
}

#[async_trait]
impl TableProvider for StromTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.constraints.as_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get(column)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        if self.def.is_sink() {
            return Err(DataFusionError::External(Box::new(
                EngineError::Unsupported(format!(
                    "sink \"{}\" cannot be queried: its changes are delivered, not stored",
                    self.def.name
                )),
            )));
        }
        if self.def.is_source() {
            return Err(DataFusionError::External(Box::new(EngineError::Unsupported(format!(
                "source \"{}\" cannot be queried directly: its rows are not stored. Create a materialized view over it, or declare it with CREATE TABLE to store its rows",
                self.def.name
            )))));
        }
        if crate::lookup::is_external(&self.def) {
            // Read through to the database.
            let ext = crate::lookup::open(&self.def)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let batch = ext.scan(Some(projection.clone())).await.map_err(|e| {
                DataFusionError::Execution(format!(
                    "lookup table \"{}\": reading it from the database failed: {e}",
                    self.def.name
                ))
            })?;
            let schema = Arc::new(self.schema.project(&projection)?);
            let batch = RecordBatch::try_new_with_options(
                Arc::clone(&schema),
                batch.columns().to_vec(),
                &datafusion::arrow::record_batch::RecordBatchOptions::new()
                    .with_row_count(Some(batch.num_rows())),
            )?;
            return Ok(MemorySourceConfig::try_new_exec(
                &[vec![batch]],
                schema,
                None,
            )?);
        }
        if self.def.is_view() {
            let key = crate::stream::runtime::failure_key(self.def.id);
            if let Some(msg) = self
                .snapshot
                .get(&key)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
            {
                return Err(DataFusionError::Execution(format!(
                    "materialized view \"{}\" failed and is no longer maintained: {}; drop and recreate it",
                    self.def.name,
                    String::from_utf8_lossy(&msg)
                )));
            }
        }
        let schema = Arc::new(self.schema.project(&projection)?);
        let row_positions = projection.iter().map(|&i| self.columns[i]).collect();
        let plan = plan_scan(&self.def, filters);
        Ok(Arc::new(StromScanExec::new(
            Arc::clone(&self.def),
            Arc::clone(&self.snapshot),
            schema,
            row_positions,
            plan,
            limit,
        )))
    }
}

/// Reads rows in key order, [`SCAN_STEP`] at a time, at one snapshot.
#[derive(Debug)]
pub struct StromScanExec {
    def: Arc<TableDef>,
    snapshot: Arc<Snapshot>,
    schema: SchemaRef,
    row_positions: Vec<usize>,
    plan: ScanPlan,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl StromScanExec {
    fn new(
        def: Arc<TableDef>,
        snapshot: Arc<Snapshot>,
        schema: SchemaRef,
        row_positions: Vec<usize>,
        plan: ScanPlan,
        limit: Option<usize>,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        StromScanExec {
            def,
            snapshot,
            schema,
            row_positions,
            plan,
            limit,
            properties,
        }
    }
}

impl DisplayAs for StromScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StromScanExec: table={} {}",
            self.def.name,
            self.plan.describe()
        )?;
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StromScanExec {
    fn name(&self) -> &str {
        "StromScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let cursor = ScanCursor {
            def: Arc::clone(&self.def),
            snapshot: Arc::clone(&self.snapshot),
            types: table::stored_types(&self.def),
            schema: Arc::clone(&self.schema),
            row_positions: self.row_positions.clone(),
            plan: self.plan.clone(),
            range_index: 0,
            resume_from: None,
            remaining: self.limit.unwrap_or(usize::MAX),
            done: false,
        };
        let stream = futures::stream::unfold(cursor, |mut c| async move {
            match c.next_batch() {
                Ok(Some(b)) => Some((Ok(b), c)),
                Ok(None) => None,
                Err(e) => {
                    c.done = true;
                    Some((Err(DataFusionError::External(Box::new(e))), c))
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }
}

struct ScanCursor {
    def: Arc<TableDef>,
    snapshot: Arc<Snapshot>,
    types: Vec<DataType>,
    schema: SchemaRef,
    row_positions: Vec<usize>,
    plan: ScanPlan,
    range_index: usize,
    /// Where the current range continues (exclusive of keys already returned).
    resume_from: Option<Vec<u8>>,
    remaining: usize,
    done: bool,
}

impl ScanCursor {
    /// Decodes a stored row; a view's row is repeated as often as its count says.
    fn push_row(&self, rows: &mut Vec<Vec<ScalarValue>>, value: &[u8]) -> Result<(), EngineError> {
        let row = table::decode(&self.def, &self.types, value)?;
        if self.def.is_view() {
            let n = table::view_row_count(&self.def, &row)?;
            for _ in 1..n {
                rows.push(row.clone());
            }
            if n > 0 {
                rows.push(row);
            }
        } else {
            rows.push(row);
        }
        Ok(())
    }
    fn next_batch(&mut self) -> Result<Option<datafusion::arrow::array::RecordBatch>, EngineError> {
        if self.done || self.remaining == 0 {
            return Ok(None);
        }
        let mut rows = Vec::new();
        match &self.plan {
            ScanPlan::Points(keys) => {
                for v in self.snapshot.multi_get(keys)?.into_iter().flatten() {
                    self.push_row(&mut rows, &v)?;
                }
                self.done = true;
            }
            ScanPlan::Ranges(ranges) => {
                let want = SCAN_STEP.min(self.remaining);
                while rows.len() < want && self.range_index < ranges.len() {
                    let (lo, hi) = &ranges[self.range_index];
                    let from = self.resume_from.as_deref().unwrap_or(lo);
                    let pairs = self.snapshot.scan(from, hi, want - rows.len())?;
                    let exhausted = pairs.len() < want - rows.len();
                    if let Some((k, _)) = pairs.last() {
                        let mut next = k.to_vec();
                        next.push(0); // smallest key after k
                        self.resume_from = Some(next);
                    }
                    for (_, v) in &pairs {
                        self.push_row(&mut rows, v)?;
                    }
                    if exhausted {
                        self.range_index += 1;
                        self.resume_from = None;
                    }
                }
                if self.range_index >= ranges.len() {
                    self.done = true;
                }
            }
        }
        rows.truncate(self.remaining);
        self.remaining -= rows.len();
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(table::rows_to_batch(
            &self.schema,
            &self.row_positions,
            &rows,
        )?))
    }
}
