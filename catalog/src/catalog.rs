//! [`Catalog`]: an immutable-by-convention snapshot of every object.
//!
//! Writers clone the current snapshot, apply one DDL change with the `&mut self` methods
//! below, persist it, then publish it. Readers hold an `Arc<Catalog>` for a whole statement,
//! so a concurrent DDL never changes what a running statement sees.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::{CatalogError, Result};
use crate::ids::{SchemaId, TableId};
use crate::object::{SchemaDef, TableDef};

pub const DEFAULT_SCHEMA: &str = "public";
/// Schemas that exist in every database and are answered by the server, not stored.
pub const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    schemas: BTreeMap<SchemaId, SchemaDef>,
    tables: BTreeMap<TableId, TableDef>,
    next_id: u32,
    /// Bumped by every change; lets caches tell snapshots apart.
    pub version: u64,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    /// A fresh catalog holding the `public` schema.
    pub fn new() -> Self {
        let mut c = Catalog {
            schemas: BTreeMap::new(),
            tables: BTreeMap::new(),
            next_id: 0,
            version: 0,
        };
        c.create_schema(DEFAULT_SCHEMA)
            .expect("invariant: empty catalog has no schema");
        c
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("invariant: catalog serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(serde_json::from_slice(bytes)?)
    }

    fn alloc_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn schemas(&self) -> impl Iterator<Item = &SchemaDef> {
        self.schemas.values()
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableDef> {
        self.tables.values()
    }

    pub fn schema(&self, id: SchemaId) -> Option<&SchemaDef> {
        self.schemas.get(&id)
    }

    pub fn schema_by_name(&self, name: &str) -> Option<&SchemaDef> {
        self.schemas.values().find(|s| s.name == name)
    }

    pub fn table(&self, id: TableId) -> Option<&TableDef> {
        self.tables.get(&id)
    }

    pub fn table_by_oid(&self, oid: u32) -> Option<&TableDef> {
        self.tables.values().find(|t| t.id.oid() == oid)
    }

    pub fn table_by_name(&self, schema: SchemaId, name: &str) -> Option<&TableDef> {
        self.tables
            .values()
            .find(|t| t.schema == schema && t.name == name)
    }

    pub fn tables_in(&self, schema: SchemaId) -> impl Iterator<Item = &TableDef> {
        self.tables.values().filter(move |t| t.schema == schema)
    }

    /// Resolves `[schema.]name`; an unqualified name is looked up along `search_path`.
    pub fn resolve_table(
        &self,
        schema: Option<&str>,
        name: &str,
        search_path: &[String],
    ) -> Result<&TableDef> {
        match schema {
            Some(s) => {
                let sd = self
                    .schema_by_name(s)
                    .ok_or_else(|| CatalogError::SchemaNotFound(s.to_string()))?;
                self.table_by_name(sd.id, name)
                    .ok_or_else(|| CatalogError::TableNotFound(format!("{s}.{name}")))
            }
            None => search_path
                .iter()
                .filter_map(|s| self.schema_by_name(s))
                .find_map(|sd| self.table_by_name(sd.id, name))
                .ok_or_else(|| CatalogError::TableNotFound(name.to_string())),
        }
    }

    pub fn create_schema(&mut self, name: &str) -> Result<SchemaId> {
        if self.schema_by_name(name).is_some() || SYSTEM_SCHEMAS.contains(&name) {
            return Err(CatalogError::SchemaExists(name.to_string()));
        }
        let id = SchemaId(self.alloc_id());
        self.schemas.insert(
            id,
            SchemaDef {
                id,
                name: name.to_string(),
            },
        );
        self.version += 1;
        Ok(id)
    }

    /// Drops a schema; with `cascade` its tables go too and are returned.
    pub fn drop_schema(&mut self, name: &str, cascade: bool) -> Result<Vec<TableDef>> {
        let sd = self
            .schema_by_name(name)
            .ok_or_else(|| CatalogError::SchemaNotFound(name.to_string()))?
            .clone();
        let tables: Vec<TableDef> = self.tables_in(sd.id).cloned().collect();
        if !tables.is_empty() && !cascade {
            return Err(CatalogError::SchemaNotEmpty(name.to_string()));
        }
        for t in &tables {
            self.tables.remove(&t.id);
        }
        self.schemas.remove(&sd.id);
        self.version += 1;
        Ok(tables)
    }

    /// Adds a table; `def.id` is ignored and a fresh id assigned.
    pub fn create_table(&mut self, mut def: TableDef) -> Result<TableId> {
        if self.schema(def.schema).is_none() {
            return Err(CatalogError::SchemaNotFound(format!("{:?}", def.schema)));
        }
        if self.table_by_name(def.schema, &def.name).is_some() {
            return Err(CatalogError::TableExists(def.name));
        }
        def.id = TableId(self.alloc_id());
        let id = def.id;
        self.tables.insert(id, def);
        self.version += 1;
        Ok(id)
    }

    /// Views that read `id` directly.
    pub fn dependants(&self, id: TableId) -> impl Iterator<Item = &TableDef> {
        self.tables
            .values()
            .filter(move |t| t.view.as_ref().is_some_and(|v| v.depends_on.contains(&id)))
    }

    /// `id` and every view that depends on it, directly or not, ordered so that each view
    /// comes after everything it reads (drop in reverse).
    pub fn with_dependants(&self, id: TableId) -> Vec<TableId> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let next: Vec<TableId> = self.dependants(out[i]).map(|t| t.id).collect();
            for n in next {
                if let Some(pos) = out.iter().position(|&x| x == n) {
                    out.remove(pos);
                }
                out.push(n);
            }
            i += 1;
        }
        out
    }

    /// Replaces the connector options of a table or source (`ALTER SOURCE ... SET`).
    pub fn set_connector_options(
        &mut self,
        id: TableId,
        options: std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        let def = self
            .tables
            .get_mut(&id)
            .ok_or_else(|| CatalogError::TableNotFound(id.to_string()))?;
        if let Some(c) = def.connector.as_mut() {
            c.options = options;
        }
        self.version += 1;
        Ok(())
    }

    /// Replaces the indexes of a table or view (`CREATE INDEX`, `DROP INDEX`).
    pub fn set_indexes(&mut self, id: TableId, indexes: Vec<crate::IndexDef>) -> Result<()> {
        let def = self
            .tables
            .get_mut(&id)
            .ok_or_else(|| CatalogError::TableNotFound(id.to_string()))?;
        if let Some(max) = indexes.iter().map(|i| i.id + 1).max() {
            def.next_index_id = def.next_index_id.max(max);
        }
        def.indexes = indexes;
        self.version += 1;
        Ok(())
    }

    pub fn drop_table(&mut self, id: TableId) -> Result<TableDef> {
        let def = self
            .tables
            .remove(&id)
            .ok_or_else(|| CatalogError::TableNotFound(id.to_string()))?;
        self.version += 1;
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ColumnDef;
    use crate::types::SqlType;

    fn table(schema: SchemaId, name: &str) -> TableDef {
        TableDef {
            id: TableId(0),
            schema,
            name: name.into(),
            columns: vec![ColumnDef {
                name: "id".into(),
                ty: SqlType::BigInt,
                nullable: false,
                default: None,
                hidden: false,
            }],
            pk: vec![0],
            user_pk: true,
            view: None,
            connector: None,
            watermark: None,
            indexes: Vec::new(),
            next_index_id: 0,
        }
    }

    #[test]
    fn create_resolve_drop_round_trip_through_bytes() {
        let mut c = Catalog::new();
        let public = c.schema_by_name("public").unwrap().id;
        let s = c.create_schema("grid").unwrap();
        let t1 = c.create_table(table(public, "meter")).unwrap();
        let t2 = c.create_table(table(s, "meter")).unwrap();
        assert_ne!(t1, t2);
        assert!(matches!(
            c.create_table(table(s, "meter")),
            Err(CatalogError::TableExists(_))
        ));
        let c = Catalog::from_bytes(&c.to_bytes()).unwrap();
        let path = vec!["grid".to_string(), "public".to_string()];
        assert_eq!(c.resolve_table(None, "meter", &path).unwrap().id, t2);
        assert_eq!(
            c.resolve_table(Some("public"), "meter", &path).unwrap().id,
            t1
        );
        let mut c = c;
        assert!(matches!(
            c.drop_schema("grid", false),
            Err(CatalogError::SchemaNotEmpty(_))
        ));
        assert_eq!(c.drop_schema("grid", true).unwrap().len(), 1);
        assert!(c.resolve_table(None, "meter", &path).is_ok());
    }
}
