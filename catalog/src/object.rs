//! Object definitions as they are persisted.

use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::ids::{SchemaId, TableId};
use crate::types::SqlType;

/// Name of the hidden column that identifies rows of a table without a primary key.
pub const ROW_ID_COLUMN: &str = "_row_id";

/// Name of the hidden last column of a materialized view's stored rows: how many times the
/// row occurs (views are multisets; a row with a unique key always has count 1).
pub const VIEW_COUNT_COLUMN: &str = "_count";

/// What makes a relation a materialized view rather than a table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    /// The defining query, with every relation name schema-qualified, as planned at
    /// `CREATE`. It is planned again at every start to rebuild the dataflow.
    pub query: String,
    /// Relations (tables and views) the query reads, in first-use order.
    pub depends_on: Vec<TableId>,
    /// `EMIT ON WINDOW CLOSE`: the windowed aggregation emits each window's rows once,
    /// when the watermark passes it.
    #[serde(default)]
    pub emit_on_window_close: bool,
    /// Relations the query joins by processing time (`FOR SYSTEM_TIME AS OF
    /// PROCTIME()`), by their alias in `query` (which no longer carries the clause).
    #[serde(default)]
    pub lookups: Vec<String>,
    /// Indexes its temporal joins look rows up by (relation, index id): they cannot be
    /// dropped while the view exists.
    #[serde(default)]
    pub lookup_indexes: Vec<(TableId, u32)>,
    /// The layout of the view's operator state, fixed at `CREATE` so that a view keeps
    /// reading the state it wrote after an upgrade changes the default (0: views created
    /// before layouts were versioned). See `strom_engine::stream::plan::STATE_VERSION`.
    #[serde(default)]
    pub state_version: u32,
}

/// A table or source fed by an external system (`CREATE SOURCE`, `CREATE TABLE ... WITH
/// (connector = ...)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectorDef {
    /// A source: rows feed the views that read it and are not stored.
    pub is_source: bool,
    /// A sink: a view whose changes are delivered out instead of stored.
    #[serde(default)]
    pub is_sink: bool,
    /// `connector`, `topic`, `properties.*`, ... as written (names lower-cased).
    pub options: std::collections::BTreeMap<String, String>,
    /// `PLAIN`, `UPSERT`.
    pub format: String,
    /// `JSON`, `CSV`.
    pub encode: String,
    pub encode_options: std::collections::BTreeMap<String, String>,
    /// Metadata columns (`INCLUDE partition AS p`): what each holds and its column index.
    pub includes: Vec<IncludeDef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncludeDef {
    /// `key`, `partition`, `offset`, `timestamp`, `topic`, `header`.
    pub kind: String,
    /// The header name of `INCLUDE header 'name'`.
    pub argument: Option<String>,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaDef {
    pub id: SchemaId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    /// The `DEFAULT` expression as SQL text, re-planned on every insert (so `now()` is
    /// evaluated per statement).
    pub default: Option<String>,
    /// Hidden columns (the row id) are stored but not shown by `SELECT *` or `\d`.
    pub hidden: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDef {
    pub id: TableId,
    pub schema: SchemaId,
    pub name: String,
    /// All columns, visible ones first, hidden ones (the row id) last.
    pub columns: Vec<ColumnDef>,
    /// Indices into `columns` of the primary key, in key order. For a table without a
    /// user primary key this is the hidden row id column.
    pub pk: Vec<usize>,
    /// True when the primary key was declared by the user (false: hidden row id).
    pub user_pk: bool,
    /// Set for materialized views. Their columns are the query's output columns followed by
    /// the hidden [`VIEW_COUNT_COLUMN`]; `pk` is a unique key of the output when the planner
    /// can derive one, or every output column.
    #[serde(default)]
    pub view: Option<ViewDef>,
    /// Set for sources and tables fed by a connector.
    #[serde(default)]
    pub connector: Option<ConnectorDef>,
    /// `WATERMARK FOR column AS expr`: the table is append-only, and rows behind the
    /// watermark are kept aside as late instead of stored.
    #[serde(default)]
    pub watermark: Option<WatermarkDef>,
    /// Secondary indexes (`CREATE INDEX`), which temporal joins look rows up by.
    #[serde(default)]
    pub indexes: Vec<IndexDef>,
    /// The id the next index gets (ids are never reused).
    #[serde(default)]
    pub next_index_id: u32,
}

/// `CREATE INDEX name ON table (columns)`: entries `columns ++ primary key` kept with the
/// rows, so rows can be found by `columns` (see the engine's `keys::index_prefix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexDef {
    /// Numbers the index within its table (never reused by the table).
    pub id: u32,
    pub name: String,
    /// Indices into the table's columns, in index order.
    pub columns: Vec<usize>,
}

/// A table's or source's event-time watermark: after a row with `column = t` arrived, the
/// watermark is at least `expr` evaluated on that row (`ts - INTERVAL '30' SECOND`); a later
/// row whose `column` is below the watermark is late.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatermarkDef {
    pub column: usize,
    /// The expression's SQL text, over the table's columns.
    pub expr: String,
    /// `late_data.table`: the table late rows are written to (its columns: the relation's
    /// visible columns, then `_late_reason` and `_late_watermark`). Without it, or once it
    /// is dropped, late rows are kept in `strom_catalog.late_rows`.
    #[serde(default)]
    pub late_table: Option<TableId>,
    /// `WITH TTL`: a table's stored rows expire once the watermark passes their time
    /// (they are deleted from storage; views that already saw them keep their results).
    #[serde(default)]
    pub ttl: bool,
}

impl TableDef {
    pub fn visible_columns(&self) -> impl Iterator<Item = (usize, &ColumnDef)> {
        self.columns.iter().enumerate().filter(|(_, c)| !c.hidden)
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn has_row_id(&self) -> bool {
        !self.user_pk && self.view.is_none()
    }

    /// A primary key the user declared (views have derived keys, never declared ones).
    pub fn has_declared_pk(&self) -> bool {
        self.user_pk && self.view.is_none()
    }

    pub fn is_view(&self) -> bool {
        self.view.is_some()
    }

    /// A source: its rows are not stored, only handed to the views reading it.
    pub fn is_source(&self) -> bool {
        self.connector.as_ref().is_some_and(|c| c.is_source)
    }

    /// A sink: a view whose changes are delivered out, not stored.
    pub fn is_sink(&self) -> bool {
        self.connector.as_ref().is_some_and(|c| c.is_sink)
    }

    /// "table", "source" or "materialized view", for messages.
    pub fn kind_name(&self) -> &'static str {
        if self.is_sink() {
            "sink"
        } else if self.is_view() {
            "materialized view"
        } else if self.is_source() {
            "source"
        } else {
            "table"
        }
    }

    /// The Arrow schema of stored rows, hidden columns included.
    pub fn full_arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(column_field)
                .collect::<Vec<Field>>(),
        ))
    }

    /// The Arrow schema users see (`SELECT *`).
    pub fn visible_arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.visible_columns()
                .map(|(_, c)| column_field(c))
                .collect::<Vec<Field>>(),
        ))
    }
}

/// The Arrow field of a column; the SQL type travels in the field metadata so that result
/// encoding can tell e.g. `jsonb` from `varchar` (both are Arrow `Utf8`).
pub fn column_field(c: &ColumnDef) -> Field {
    Field::new(&c.name, c.ty.to_arrow(), c.nullable).with_metadata(c.ty.field_metadata())
}
