//! `pg_catalog`: the system catalogs PostgreSQL tools query, computed from the Strom catalog.
//!
//! Every relation listed in [`RELATIONS`] exists with PostgreSQL's column names and types.
//! The ones Strom models (namespaces, classes, attributes, types, defaults, primary-key
//! indexes and constraints, the database, the user, settings, tables) have rows; the rest
//! answer with zero rows, so tools that probe them keep working.
//!
//! Oids: user schemas and tables use `FIRST_USER_OID + id` (see `strom_catalog::ids`); the
//! primary-key index of a table uses the table oid with [`INDEX_OID_BIT`] set.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::SchemaProvider;
use datafusion::common::ScalarValue;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::Result as DfResult;
use strom_catalog::types::base_types;
use strom_catalog::SqlType;

use crate::query::{QueryEnv, DATABASE_NAME};

pub const PG_CATALOG_OID: u32 = 11;
pub const PUBLIC_LIKE_INFORMATION_SCHEMA_OID: u32 = 13_000;
pub const INDEX_OID_BIT: u32 = 0x4000_0000;
const DATABASE_OID: u32 = 16_383;
const USER_OID: u32 = 10;

pub fn index_oid_of(table_oid: u32) -> u32 {
    table_oid | INDEX_OID_BIT
}

/// The table an index oid belongs to; a plain table oid maps to itself.
pub fn table_oid_of_index(oid: u32) -> u32 {
    oid & !INDEX_OID_BIT
}

/// The SQL type of a PostgreSQL type oid, for base and array types Strom knows.
pub fn type_by_oid(oid: u32) -> Option<SqlType> {
    base_types().into_iter().find_map(|t| {
        if t.pg_oid() == oid {
            Some(t)
        } else {
            let arr = SqlType::Array(Box::new(t));
            (arr.pg_oid() == oid).then_some(arr)
        }
    })
}

/// Oids for `'pg_class'::regclass` and friends.
pub fn system_relation_oid(name: &str) -> Option<u32> {
    let n = name.strip_prefix("pg_catalog.").unwrap_or(name);
    RELATIONS
        .iter()
        .position(|(r, _)| *r == n)
        .map(|i| 1000 + i as u32)
}

/// Column specs: `name:type` with types oid, text, char, int2, int4, int8, bool, float4,
/// text[], int2[], oid[], ts.
pub const RELATIONS: &[(&str, &str)] = &[
    ("pg_namespace", "oid:oid nspname:text nspowner:oid nspacl:text[]"),
    ("pg_class", "oid:oid relname:text relnamespace:oid reltype:oid reloftype:oid relowner:oid relam:oid relfilenode:oid reltablespace:oid relpages:int4 reltuples:float4 relallvisible:int4 reltoastrelid:oid relhasindex:bool relisshared:bool relpersistence:char relkind:char relnatts:int2 relchecks:int2 relhasrules:bool relhastriggers:bool relhassubclass:bool relrowsecurity:bool relforcerowsecurity:bool relispopulated:bool relreplident:char relispartition:bool relrewrite:oid relfrozenxid:oid relminmxid:oid relacl:text[] reloptions:text[] relpartbound:text"),
    ("pg_attribute", "attrelid:oid attname:text atttypid:oid attstattarget:int4 attlen:int2 attnum:int2 attndims:int4 attcacheoff:int4 atttypmod:int4 attbyval:bool attalign:char attstorage:char attcompression:char attnotnull:bool atthasdef:bool atthasmissing:bool attidentity:char attgenerated:char attisdropped:bool attislocal:bool attinhcount:int4 attcollation:oid attacl:text[] attoptions:text[] attfdwoptions:text[] attmissingval:text"),
    ("pg_type", "oid:oid typname:text typnamespace:oid typowner:oid typlen:int2 typbyval:bool typtype:char typcategory:char typispreferred:bool typisdefined:bool typdelim:char typrelid:oid typsubscript:text typelem:oid typarray:oid typinput:text typoutput:text typreceive:text typsend:text typmodin:text typmodout:text typanalyze:text typalign:char typstorage:char typnotnull:bool typbasetype:oid typtypmod:int4 typndims:int4 typcollation:oid typdefaultbin:text typdefault:text typacl:text[]"),
    ("pg_attrdef", "oid:oid adrelid:oid adnum:int2 adbin:text"),
    ("pg_index", "indexrelid:oid indrelid:oid indnatts:int2 indnkeyatts:int2 indisunique:bool indnullsnotdistinct:bool indisprimary:bool indisexclusion:bool indimmediate:bool indisclustered:bool indisvalid:bool indcheckxmin:bool indisready:bool indislive:bool indisreplident:bool indkey:int2[] indcollation:oid[] indclass:oid[] indoption:int2[] indexprs:text indpred:text"),
    ("pg_constraint", "oid:oid conname:text connamespace:oid contype:char condeferrable:bool condeferred:bool convalidated:bool conrelid:oid contypid:oid conindid:oid conparentid:oid confrelid:oid confupdtype:char confdeltype:char confmatchtype:char conislocal:bool coninhcount:int4 connoinherit:bool conkey:int2[] confkey:int2[] conpfeqop:oid[] conppeqop:oid[] conffeqop:oid[] confdelsetcols:int2[] conexclop:oid[] conbin:text"),
    ("pg_database", "oid:oid datname:text datdba:oid encoding:int4 datlocprovider:char datistemplate:bool datallowconn:bool datconnlimit:int4 datfrozenxid:oid datminmxid:oid dattablespace:oid datcollate:text datctype:text daticulocale:text datcollversion:text datacl:text[]"),
    ("pg_roles", "rolname:text rolsuper:bool rolinherit:bool rolcreaterole:bool rolcreatedb:bool rolcanlogin:bool rolreplication:bool rolconnlimit:int4 rolpassword:text rolvaliduntil:ts rolbypassrls:bool rolconfig:text[] oid:oid"),
    ("pg_authid", "oid:oid rolname:text rolsuper:bool rolinherit:bool rolcreaterole:bool rolcreatedb:bool rolcanlogin:bool rolreplication:bool rolbypassrls:bool rolconnlimit:int4 rolpassword:text rolvaliduntil:ts"),
    ("pg_user", "usename:text usesysid:oid usecreatedb:bool usesuper:bool userepl:bool usebypassrls:bool passwd:text valuntil:ts useconfig:text[]"),
    ("pg_am", "oid:oid amname:text amhandler:text amtype:char"),
    ("pg_tables", "schemaname:text tablename:text tableowner:text tablespace:text hasindexes:bool hasrules:bool hastriggers:bool rowsecurity:bool"),
    ("pg_views", "schemaname:text viewname:text viewowner:text definition:text"),
    ("pg_matviews", "schemaname:text matviewname:text matviewowner:text tablespace:text hasindexes:bool ispopulated:bool definition:text"),
    ("pg_indexes", "schemaname:text tablename:text indexname:text tablespace:text indexdef:text"),
    ("pg_settings", "name:text setting:text unit:text category:text short_desc:text extra_desc:text context:text vartype:text source:text min_val:text max_val:text enumvals:text[] boot_val:text reset_val:text sourcefile:text sourceline:int4 pending_restart:bool"),
    ("pg_collation", "oid:oid collname:text collnamespace:oid collowner:oid collprovider:char collisdeterministic:bool collencoding:int4 collcollate:text collctype:text colliculocale:text collversion:text"),
    ("pg_description", "objoid:oid classoid:oid objsubid:int4 description:text"),
    ("pg_shdescription", "objoid:oid classoid:oid description:text"),
    ("pg_proc", "oid:oid proname:text pronamespace:oid proowner:oid prolang:oid procost:float4 prorows:float4 provariadic:oid prosupport:text prokind:char prosecdef:bool proleakproof:bool proisstrict:bool proretset:bool provolatile:char proparallel:char pronargs:int2 pronargdefaults:int2 prorettype:oid proargtypes:oid[] proallargtypes:oid[] proargmodes:text[] proargnames:text[] proargdefaults:text protrftypes:oid[] prosrc:text probin:text prosqlbody:text proconfig:text[] proacl:text[]"),
    ("pg_inherits", "inhrelid:oid inhparent:oid inhseqno:int4 inhdetachpending:bool"),
    ("pg_policy", "oid:oid polname:text polrelid:oid polcmd:char polpermissive:bool polroles:oid[] polqual:text polwithcheck:text"),
    ("pg_statistic_ext", "oid:oid stxrelid:oid stxname:text stxnamespace:oid stxowner:oid stxstattarget:int4 stxkeys:int2[] stxkind:text[] stxexprs:text"),
    ("pg_publication", "oid:oid pubname:text pubowner:oid puballtables:bool pubinsert:bool pubupdate:bool pubdelete:bool pubtruncate:bool pubviaroot:bool"),
    ("pg_publication_rel", "oid:oid prpubid:oid prrelid:oid prqual:text prattrs:int2[]"),
    ("pg_publication_namespace", "oid:oid pnpubid:oid pnnspid:oid"),
    ("pg_subscription", "oid:oid subdbid:oid subname:text subowner:oid subenabled:bool"),
    ("pg_trigger", "oid:oid tgrelid:oid tgparentid:oid tgname:text tgfoid:oid tgtype:int2 tgenabled:char tgisinternal:bool tgconstrrelid:oid tgconstrindid:oid tgconstraint:oid tgdeferrable:bool tginitdeferred:bool tgnargs:int2 tgattr:int2[] tgargs:text tgqual:text tgoldtable:text tgnewtable:text"),
    ("pg_rewrite", "oid:oid rulename:text ev_class:oid ev_type:char ev_enabled:char is_instead:bool ev_qual:text ev_action:text"),
    ("pg_foreign_table", "ftrelid:oid ftserver:oid ftoptions:text[]"),
    ("pg_foreign_server", "oid:oid srvname:text srvowner:oid srvfdw:oid srvtype:text srvversion:text srvacl:text[] srvoptions:text[]"),
    ("pg_foreign_data_wrapper", "oid:oid fdwname:text fdwowner:oid fdwhandler:oid fdwvalidator:oid fdwacl:text[] fdwoptions:text[]"),
    ("pg_partitioned_table", "partrelid:oid partstrat:char partnatts:int2 partdefid:oid partattrs:int2[] partclass:oid[] partcollation:oid[] partexprs:text"),
    ("pg_sequence", "seqrelid:oid seqtypid:oid seqstart:int8 seqincrement:int8 seqmax:int8 seqmin:int8 seqcache:int8 seqcycle:bool"),
    ("pg_sequences", "schemaname:text sequencename:text sequenceowner:text data_type:text start_value:int8 min_value:int8 max_value:int8 increment_by:int8 cycle:bool cache_size:int8 last_value:int8"),
    ("pg_extension", "oid:oid extname:text extowner:oid extnamespace:oid extrelocatable:bool extversion:text extconfig:oid[] extcondition:text[]"),
    ("pg_event_trigger", "oid:oid evtname:text evtevent:text evtowner:oid evtfoid:oid evtenabled:char evttags:text[]"),
    ("pg_stat_activity", "datid:oid datname:text pid:int4 leader_pid:int4 usesysid:oid usename:text application_name:text client_addr:text client_hostname:text client_port:int4 backend_start:ts xact_start:ts query_start:ts state_change:ts wait_event_type:text wait_event:text state:text backend_xid:oid backend_xmin:oid query_id:int8 query:text backend_type:text"),
    ("pg_enum", "oid:oid enumtypid:oid enumsortorder:float4 enumlabel:text"),
    ("pg_range", "rngtypid:oid rngsubtype:oid rngmultitypid:oid rngcollation:oid rngsubopc:oid rngcanonical:text rngsubdiff:text"),
    ("pg_tablespace", "oid:oid spcname:text spcowner:oid spcacl:text[] spcoptions:text[]"),
    ("pg_auth_members", "oid:oid roleid:oid member:oid grantor:oid admin_option:bool"),
    ("pg_depend", "classid:oid objid:oid objsubid:int4 refclassid:oid refobjid:oid refobjsubid:int4 deptype:char"),
    ("pg_operator", "oid:oid oprname:text oprnamespace:oid oprowner:oid oprkind:char oprcanmerge:bool oprcanhash:bool oprleft:oid oprright:oid oprresult:oid oprcom:oid oprnegate:oid oprcode:text oprrest:text oprjoin:text"),
    ("pg_cast", "oid:oid castsource:oid casttarget:oid castfunc:oid castcontext:char castmethod:char"),
    ("pg_language", "oid:oid lanname:text lanowner:oid lanispl:bool lanpltrusted:bool lanplcallfoid:oid laninline:oid lanvalidator:oid lanacl:text[]"),
    ("pg_opclass", "oid:oid opcmethod:oid opcname:text opcnamespace:oid opcowner:oid opcfamily:oid opcintype:oid opcdefault:bool opckeytype:oid"),
    ("pg_conversion", "oid:oid conname:text connamespace:oid conowner:oid conforencoding:int4 contoencoding:int4 conproc:text condefault:bool"),
    ("pg_stat_user_tables", "relid:oid schemaname:text relname:text seq_scan:int8 seq_tup_read:int8 idx_scan:int8 idx_tup_fetch:int8 n_tup_ins:int8 n_tup_upd:int8 n_tup_del:int8 n_live_tup:int8 n_dead_tup:int8"),
    ("pg_locks", "locktype:text database:oid relation:oid pid:int4 mode:text granted:bool"),
    ("pg_prepared_statements", "name:text statement:text prepare_time:ts parameter_types:text[] from_sql:bool"),
    ("pg_timezone_names", "name:text abbrev:text utc_offset:text is_dst:bool"),
    ("pg_available_extensions", "name:text default_version:text installed_version:text comment:text"),
];

/// The relations [`rows_of`] has rows for; all others are always empty.
const MODELED: &[&str] = &[
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_type",
    "pg_attrdef",
    "pg_index",
    "pg_constraint",
    "pg_database",
    "pg_roles",
    "pg_authid",
    "pg_user",
    "pg_am",
    "pg_tables",
    "pg_indexes",
    "pg_settings",
];

/// Whether a `pg_catalog` relation never has rows (see `strom_sql::rewrite`).
pub fn is_empty_relation(name: &str) -> bool {
    RELATIONS.iter().any(|(n, _)| *n == name) && !MODELED.contains(&name)
}

fn col_type(t: &str) -> DataType {
    let list = |inner: DataType| DataType::List(Arc::new(Field::new_list_field(inner, true)));
    match t {
        "oid" => DataType::UInt32,
        "int2" => DataType::Int16,
        "int4" => DataType::Int32,
        "int8" => DataType::Int64,
        "bool" => DataType::Boolean,
        "float4" => DataType::Float32,
        "text[]" => list(DataType::Utf8),
        "int2[]" => list(DataType::Int16),
        "oid[]" => list(DataType::UInt32),
        "ts" => DataType::Timestamp(
            TimeUnit::Microsecond,
            Some(strom_catalog::types::UTC.into()),
        ),
        _ => DataType::Utf8, // text, char
    }
}

pub fn relation_schema(spec: &str) -> SchemaRef {
    Arc::new(Schema::new(
        spec.split_whitespace()
            .map(|c| {
                let (name, ty) = c
                    .split_once(':')
                    .expect("invariant: column spec is name:type");
                Field::new(name, col_type(ty), true)
            })
            .collect::<Vec<_>>(),
    ))
}

#[derive(Debug)]
pub struct PgCatalogSchema {
    env: Arc<QueryEnv>,
}

impl PgCatalogSchema {
    pub fn new(env: Arc<QueryEnv>) -> Self {
        PgCatalogSchema { env }
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        RELATIONS.iter().map(|(n, _)| n.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let Some((_, spec)) = RELATIONS.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        let schema = relation_schema(spec);
        let rows = rows_of(name, &self.env);
        let projection: Vec<usize> = (0..schema.fields().len()).collect();
        let batch = strom_engine::table::rows_to_batch(&schema, &projection, &rows)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        Ok(Some(Arc::new(MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        RELATIONS.iter().any(|(n, _)| *n == name)
    }
}

// Short constructors for row values.
fn o(v: u32) -> ScalarValue {
    ScalarValue::UInt32(Some(v))
}
fn t(v: impl Into<String>) -> ScalarValue {
    ScalarValue::Utf8(Some(v.into()))
}
fn b(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}
fn i2(v: i16) -> ScalarValue {
    ScalarValue::Int16(Some(v))
}
fn i4(v: i32) -> ScalarValue {
    ScalarValue::Int32(Some(v))
}
fn null() -> ScalarValue {
    ScalarValue::Null
}
fn i2list(v: Vec<i16>) -> ScalarValue {
    let items: Vec<ScalarValue> = v.into_iter().map(i2).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&items, &DataType::Int16))
}

/// Fills a row to the relation's width with NULLs, then casts each value to its column.
fn fit(schema: &SchemaRef, mut row: Vec<ScalarValue>) -> Vec<ScalarValue> {
    row.resize(schema.fields().len(), ScalarValue::Null);
    row.into_iter()
        .zip(schema.fields())
        .map(|(v, f)| {
            if v.is_null() {
                ScalarValue::try_from(f.data_type()).unwrap_or(ScalarValue::Null)
            } else {
                v.cast_to(f.data_type()).unwrap_or(v)
            }
        })
        .collect()
}

fn type_len(ty: &SqlType) -> i16 {
    match ty {
        SqlType::Boolean => 1,
        SqlType::SmallInt => 2,
        SqlType::Int | SqlType::Real | SqlType::Date => 4,
        SqlType::BigInt
        | SqlType::Double
        | SqlType::Time
        | SqlType::Timestamp
        | SqlType::Timestamptz => 8,
        SqlType::Interval => 16,
        _ => -1,
    }
}

fn type_category(ty: &SqlType) -> &'static str {
    match ty {
        SqlType::Boolean => "B",
        SqlType::SmallInt
        | SqlType::Int
        | SqlType::BigInt
        | SqlType::Real
        | SqlType::Double
        | SqlType::Numeric { .. } => "N",
        SqlType::Varchar(_) | SqlType::Text => "S",
        SqlType::Date | SqlType::Time | SqlType::Timestamp | SqlType::Timestamptz => "D",
        SqlType::Interval => "T",
        SqlType::Array(_) => "A",
        _ => "U",
    }
}

fn rows_of(name: &str, env: &QueryEnv) -> Vec<Vec<ScalarValue>> {
    let spec = RELATIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .unwrap_or("");
    let schema = relation_schema(spec);
    let cat = &env.catalog;
    let user = env.settings.user.clone();
    let schema_name = |id| cat.schema(id).map(|s| s.name.clone()).unwrap_or_default();
    let rows: Vec<Vec<ScalarValue>> = match name {
        "pg_namespace" => {
            let mut rows = vec![
                vec![o(PG_CATALOG_OID), t("pg_catalog"), o(USER_OID)],
                vec![
                    o(PUBLIC_LIKE_INFORMATION_SCHEMA_OID),
                    t("information_schema"),
                    o(USER_OID),
                ],
            ];
            rows.extend(
                cat.schemas()
                    .map(|s| vec![o(s.id.oid()), t(&s.name), o(USER_OID)]),
            );
            rows
        }
        "pg_class" => {
            let mut rows = Vec::new();
            for tb in cat.tables() {
                let natts = tb.visible_columns().count() as i16;
                let class = |oid: u32, name: String, kind: &str, natts: i16, hasindex: bool| {
                    vec![
                        o(oid),
                        t(name),
                        o(tb.schema.oid()),
                        o(0),
                        o(0),
                        o(USER_OID),
                        o(if kind == "r" { 2 } else { 403 }),
                        o(oid),
                        o(0),
                        i4(0),
                        ScalarValue::Float32(Some(-1.0)),
                        i4(0),
                        o(0),
                        b(hasindex),
                        b(false),
                        t("p"),
                        t(kind),
                        i2(natts),
                        i2(0),
                        b(false),
                        b(false),
                        b(false),
                        b(false),
                        b(false),
                        b(true),
                        t("d"),
                        b(false),
                        o(0),
                        o(0),
                        o(0),
                        null(),
                        null(),
                        null(),
                    ]
                };
                let kind = if tb.is_view() { "m" } else { "r" };
                let has_index = tb.user_pk && !tb.is_view();
                rows.push(class(tb.id.oid(), tb.name.clone(), kind, natts, has_index));
                if has_index {
                    rows.push(class(
                        index_oid_of(tb.id.oid()),
                        format!("{}_pkey", tb.name),
                        "i",
                        tb.pk.len() as i16,
                        false,
                    ));
                }
            }
            rows
        }
        "pg_attribute" => {
            let mut rows = Vec::new();
            for tb in cat.tables() {
                for (n, (_, c)) in tb.visible_columns().enumerate() {
                    rows.push(vec![
                        o(tb.id.oid()),
                        t(&c.name),
                        o(c.ty.pg_oid()),
                        i4(-1),
                        i2(type_len(&c.ty)),
                        i2(n as i16 + 1),
                        i4(matches!(c.ty, SqlType::Array(_)) as i32),
                        i4(-1),
                        i4(c.ty.pg_typmod()),
                        b(type_len(&c.ty) > 0),
                        t("i"),
                        t(if type_len(&c.ty) < 0 { "x" } else { "p" }),
                        t(""),
                        b(!c.nullable),
                        b(c.default.is_some()),
                        b(false),
                        t(""),
                        t(""),
                        b(false),
                        b(true),
                        i4(0),
                        o(if matches!(c.ty, SqlType::Varchar(_) | SqlType::Text) {
                            100
                        } else {
                            0
                        }),
                    ]);
                }
            }
            rows
        }
        "pg_type" => {
            let mut rows = Vec::new();
            for ty in base_types() {
                let arr = SqlType::Array(Box::new(ty.clone()));
                for (this, elem, array_oid) in
                    [(ty.clone(), 0, arr.pg_oid()), (arr.clone(), ty.pg_oid(), 0)]
                {
                    rows.push(vec![
                        o(this.pg_oid()),
                        t(this.pg_typname()),
                        o(PG_CATALOG_OID),
                        o(USER_OID),
                        i2(type_len(&this)),
                        b(type_len(&this) > 0 && type_len(&this) <= 8),
                        t("b"),
                        t(type_category(&this)),
                        b(false),
                        b(true),
                        t(","),
                        o(0),
                        t("-"),
                        o(elem),
                        o(array_oid),
                        t(format!("{}in", this.pg_typname())),
                        t(format!("{}out", this.pg_typname())),
                        t("-"),
                        t("-"),
                        t("-"),
                        t("-"),
                        t("-"),
                        t("i"),
                        t("p"),
                        b(false),
                        o(0),
                        i4(-1),
                        i4(0),
                        o(if matches!(this, SqlType::Varchar(_) | SqlType::Text) {
                            100
                        } else {
                            0
                        }),
                    ]);
                }
            }
            for (oid, name) in [
                (26u32, "oid"),
                (19, "name"),
                (18, "char"),
                (2205, "regclass"),
                (2206, "regtype"),
                (24, "regproc"),
                (2278, "void"),
                (2249, "record"),
                (705, "unknown"),
                (114, "json"),
            ] {
                rows.push(vec![
                    o(oid),
                    t(name),
                    o(PG_CATALOG_OID),
                    o(USER_OID),
                    i2(-1),
                    b(false),
                    t("b"),
                    t("U"),
                    b(false),
                    b(true),
                    t(","),
                    o(0),
                    t("-"),
                    o(0),
                    o(0),
                ]);
            }
            rows
        }
        "pg_attrdef" => {
            let mut rows = Vec::new();
            for tb in cat.tables() {
                for (n, (_, c)) in tb.visible_columns().enumerate() {
                    if let Some(d) = &c.default {
                        rows.push(vec![
                            o(tb.id.oid() * 100 + n as u32),
                            o(tb.id.oid()),
                            i2(n as i16 + 1),
                            t(d),
                        ]);
                    }
                }
            }
            rows
        }
        "pg_index" => cat
            .tables()
            .filter(|tb| tb.has_declared_pk())
            .map(|tb| {
                let attnums: Vec<i16> = tb.pk.iter().map(|&i| i as i16 + 1).collect();
                let n = attnums.len() as i16;
                vec![
                    o(index_oid_of(tb.id.oid())),
                    o(tb.id.oid()),
                    i2(n),
                    i2(n),
                    b(true),
                    b(false),
                    b(true),
                    b(false),
                    b(true),
                    b(false),
                    b(true),
                    b(false),
                    b(true),
                    b(true),
                    b(false),
                    i2list(attnums),
                ]
            })
            .collect(),
        "pg_constraint" => cat
            .tables()
            .filter(|tb| tb.has_declared_pk())
            .map(|tb| {
                let attnums: Vec<i16> = tb.pk.iter().map(|&i| i as i16 + 1).collect();
                vec![
                    o(index_oid_of(tb.id.oid())),
                    t(format!("{}_pkey", tb.name)),
                    o(tb.schema.oid()),
                    t("p"),
                    b(false),
                    b(false),
                    b(true),
                    o(tb.id.oid()),
                    o(0),
                    o(index_oid_of(tb.id.oid())),
                    o(0),
                    o(0),
                    t(" "),
                    t(" "),
                    t(" "),
                    b(true),
                    i4(0),
                    b(true),
                    i2list(attnums),
                ]
            })
            .collect(),
        "pg_database" => vec![vec![
            o(DATABASE_OID),
            t(DATABASE_NAME),
            o(USER_OID),
            i4(6),
            t("c"),
            b(false),
            b(true),
            i4(-1),
            o(0),
            o(0),
            o(0),
            t("C.UTF-8"),
            t("C.UTF-8"),
        ]],
        "pg_roles" => vec![vec![
            t(&user),
            b(true),
            b(true),
            b(true),
            b(true),
            b(true),
            b(true),
            i4(-1),
            t("********"),
            null(),
            b(true),
            null(),
            o(USER_OID),
        ]],
        "pg_authid" => vec![vec![
            o(USER_OID),
            t(&user),
            b(true),
            b(true),
            b(true),
            b(true),
            b(true),
            b(true),
            b(true),
            i4(-1),
        ]],
        "pg_user" => vec![vec![
            t(&user),
            o(USER_OID),
            b(true),
            b(true),
            b(true),
            b(true),
            t("********"),
        ]],
        "pg_am" => vec![
            vec![o(2), t("heap"), t("heap_tableam_handler"), t("t")],
            vec![o(403), t("btree"), t("bthandler"), t("i")],
        ],
        "pg_tables" => cat
            .tables()
            .filter(|tb| !tb.is_view())
            .map(|tb| {
                vec![
                    t(schema_name(tb.schema)),
                    t(&tb.name),
                    t(&user),
                    null(),
                    b(tb.has_declared_pk()),
                    b(false),
                    b(false),
                    b(false),
                ]
            })
            .collect(),
        "pg_indexes" => cat
            .tables()
            .filter(|tb| tb.has_declared_pk())
            .map(|tb| {
                let s = schema_name(tb.schema);
                let cols: Vec<String> = tb
                    .pk
                    .iter()
                    .map(|&i| crate::functions::quote_ident(&tb.columns[i].name))
                    .collect();
                vec![
                    t(&s),
                    t(&tb.name),
                    t(format!("{}_pkey", tb.name)),
                    null(),
                    t(format!(
                        "CREATE UNIQUE INDEX {}_pkey ON {}.{} USING btree ({})",
                        tb.name,
                        s,
                        tb.name,
                        cols.join(", ")
                    )),
                ]
            })
            .collect(),
        "pg_settings" => env
            .settings
            .all()
            .into_iter()
            .map(|(k, v)| {
                vec![
                    t(k),
                    t(v),
                    null(),
                    t("Strom"),
                    t(""),
                    null(),
                    t("user"),
                    t("string"),
                    t("default"),
                ]
            })
            .collect(),
        _ => Vec::new(),
    };
    rows.into_iter().map(|r| fit(&schema, r)).collect()
}
