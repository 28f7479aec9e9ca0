//! Newtype ids. Ids are allocated from one counter in the catalog, never reused.

use serde::{Deserialize, Serialize};

/// First oid handed to user objects, as in PostgreSQL (`FirstNormalObjectId`).
pub const FIRST_USER_OID: u32 = 16384;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SchemaId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableId(pub u32);

impl SchemaId {
    /// The PostgreSQL oid shown in `pg_namespace`.
    pub fn oid(self) -> u32 {
        FIRST_USER_OID + self.0
    }
}

impl TableId {
    /// The PostgreSQL oid shown in `pg_class`.
    pub fn oid(self) -> u32 {
        FIRST_USER_OID + self.0
    }
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
