//! pgwire handlers: one [`Backend`] serves every connection; per-connection state (the
//! [`Session`]) lives in pgwire's session extensions.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use futures::{stream, Sink};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldFormat, FieldInfo,
    QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use pgwire::types::ToSqlText;
use postgres_types::{IsNull, ToSql};
use sqlparser::ast::Statement;
use strom_catalog::SqlType;
use strom_engine::stream::runtime::StreamRuntime;
use strom_engine::Database;

use super::text::TextOptions;
use crate::error::StromError;
use crate::session::{Outcome, Param, Session};

pub struct Backend {
    db: Arc<Database>,
    stream: Arc<StreamRuntime>,
    parser: Arc<StromParser>,
}

impl Backend {
    pub fn new(db: Arc<Database>, stream: Arc<StreamRuntime>) -> Self {
        Backend {
            db,
            stream,
            parser: Arc::new(StromParser),
        }
    }

    fn session<C: ClientInfo>(&self, client: &C) -> Arc<Session> {
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .cloned()
            .unwrap_or_else(|| "root".into());
        let db = Arc::clone(&self.db);
        let stream = Arc::clone(&self.stream);
        client
            .session_extensions()
            .get_or_insert_with(move || Session::new(db, stream, &user))
    }
}

/// A parsed statement of the extended protocol (`None`: empty query).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub stmt: Statement,
}

#[derive(Debug)]
pub struct StromParser;

#[async_trait]
impl QueryParser for StromParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts =
            strom_sql::parser::parse(sql).map_err(|e| StromError::from(e).into_pgwire())?;
        match stmts.len() {
            0 => Ok(None),
            1 => Ok(Some(Prepared {
                stmt: stmts.remove(0),
            })),
            _ => Err(StromError::user(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )
            .into_pgwire()),
        }
    }

    fn get_parameter_types(&self, _stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(vec![])
    }

    fn get_result_schema(
        &self,
        _stmt: &Prepared,
        _format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(vec![])
    }
}

/// A value already encoded in the wire format the field asks for.
#[derive(Debug)]
struct Encoded<'a>(Option<&'a [u8]>);

impl ToSql for Encoded<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

impl ToSqlText for Encoded<'_> {
    fn to_sql_text(
        &self,
        ty: &Type,
        out: &mut BytesMut,
        _format_options: &FormatOptions,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }
}

fn pg_type(ty: &SqlType) -> Type {
    Type::from_oid(ty.pg_oid()).unwrap_or(Type::TEXT)
}

fn field_sql_type(f: &datafusion::arrow::datatypes::Field) -> SqlType {
    SqlType::from_arrow(f.data_type(), f.metadata()).unwrap_or(SqlType::Text)
}

fn fields_of(schema: &datafusion::arrow::datatypes::Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let ty = field_sql_type(f);
            let name = match f
                .name()
                .split_once(strom_sql::rewrite::DUPLICATE_NAME_MARKER)
            {
                Some((n, _)) => n.to_string(),
                None => f.name().clone(),
            };
            FieldInfo::new(name, None, None, pg_type(&ty), format.format_for(i))
                .with_type_modifier(ty.pg_typmod())
        })
        .collect()
}

/// Encodes query results into data rows.
fn encode_rows(
    fields: Arc<Vec<FieldInfo>>,
    schema: &datafusion::arrow::datatypes::Schema,
    batches: &[datafusion::arrow::array::RecordBatch],
    opts: &TextOptions,
) -> PgWireResult<Vec<PgWireResult<pgwire::messages::data::DataRow>>> {
    let types: Vec<SqlType> = schema.fields().iter().map(|f| field_sql_type(f)).collect();
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    let fo = FormatOptions::default();
    let mut rows = Vec::new();
    let mut text = String::new();
    let mut bin = BytesMut::new();
    for batch in batches {
        for r in 0..batch.num_rows() {
            for (c, col) in batch.columns().iter().enumerate() {
                let field = &fields[c];
                let present = if field.format() == FieldFormat::Binary {
                    bin.clear();
                    super::binary::encode_cell(col, r, &types[c], opts, &mut bin)
                        .then_some(&bin[..])
                } else {
                    text.clear();
                    super::text::format_cell(col, r, &types[c], opts, &mut text)
                        .then_some(text.as_bytes())
                };
                encoder.encode_field_with_type_and_format(
                    &Encoded(present),
                    field.datatype(),
                    field.format(),
                    &fo,
                )?;
            }
            rows.push(Ok(encoder.take_row()));
        }
    }
    Ok(rows)
}

fn response(outcome: Outcome, format: &Format, session: &Session) -> PgWireResult<Response> {
    Ok(match outcome {
        Outcome::Rows { schema, batches } => {
            let fields = Arc::new(fields_of(&schema, format));
            let opts = TextOptions {
                time_zone: session.settings().time_zone,
            };
            let rows = encode_rows(Arc::clone(&fields), &schema, &batches, &opts)?;
            Response::Query(QueryResponse::new(fields, stream::iter(rows)))
        }
        Outcome::Command { tag, rows } => {
            let t = Tag::new(tag);
            Response::Execution(match (tag, rows) {
                ("INSERT", Some(n)) => t.with_oid(0).with_rows(n),
                (_, Some(n)) => t.with_rows(n),
                _ => t,
            })
        }
        Outcome::TransactionStart => Response::TransactionStart(Tag::new("BEGIN")),
        Outcome::TransactionEnd(tag) => Response::TransactionEnd(Tag::new(tag)),
    })
}

fn error_response(e: StromError) -> Response {
    Response::Error(Box::new(e.error_info()))
}

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session(client);
        let stmts = match strom_sql::parser::parse(query) {
            Ok(s) => s,
            Err(e) => return Ok(vec![error_response(e.into())]),
        };
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in &stmts {
            match session.execute(stmt, &[], &[]).await {
                Ok(outcome) => out.push(response(outcome, &Format::UnifiedText, &session)?),
                Err(e) => {
                    tracing::debug!(error = %e, "statement failed");
                    out.push(error_response(e));
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

fn portal_params(portal: &Portal<Prepared>) -> (Vec<Param>, Vec<u32>) {
    let oids: Vec<u32> = (0..portal.parameter_len())
        .map(|i| {
            portal
                .statement
                .parameter_types
                .get(i)
                .cloned()
                .flatten()
                .map(|t| t.oid())
                .unwrap_or(0)
        })
        .collect();
    let params = portal
        .parameters
        .iter()
        .enumerate()
        .map(|(i, p)| match p {
            None => Param::Null,
            Some(bytes) if portal.parameter_format.is_binary(i) => {
                Param::Binary(oids[i], bytes.to_vec())
            }
            Some(bytes) => Param::Text(String::from_utf8_lossy(bytes).into_owned()),
        })
        .collect();
    (params, oids)
}

fn to_pg_types(
    types: &[Option<datafusion::arrow::datatypes::FieldRef>],
    declared: &[Option<Type>],
) -> Vec<Type> {
    let n = types.len().max(declared.len());
    (0..n)
        .map(|i| {
            if let Some(Some(t)) = declared.get(i) {
                return t.clone();
            }
            types
                .get(i)
                .cloned()
                .flatten()
                .and_then(|f| SqlType::from_arrow(f.data_type(), f.metadata()))
                .map(|t| pg_type(&t))
                .unwrap_or(Type::TEXT)
        })
        .collect()
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Prepared;
    type QueryParser = StromParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session(client);
        let (params, oids) = portal_params(portal);
        match session
            .execute(&portal.statement.statement.stmt, &params, &oids)
            .await
        {
            Ok(outcome) => response(outcome, &portal.result_column_format, &session),
            Err(e) => Err(e.into_pgwire()),
        }
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        stmt: &StoredStatement<Prepared>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session(client);
        let d = session
            .describe(&stmt.statement.stmt)
            .await
            .map_err(StromError::into_pgwire)?;
        let params = to_pg_types(&d.params, &stmt.parameter_types);
        let fields = d
            .columns
            .map(|s| fields_of(&s, &Format::UnifiedText))
            .unwrap_or_default();
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.session(client);
        let d = session
            .describe(&portal.statement.statement.stmt)
            .await
            .map_err(StromError::into_pgwire)?;
        let fields = d
            .columns
            .map(|s| fields_of(&s, &portal.result_column_format))
            .unwrap_or_default();
        Ok(DescribePortalResponse::new(fields))
    }
}

/// Startup without authentication (loopback, for now), announcing PostgreSQL 15.
pub struct Startup;

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let mut params = DefaultServerParameterProvider::default();
            params.server_version = crate::functions::SERVER_VERSION.to_string();
            params.time_zone = "UTC".into();
            params.date_style = "ISO, MDY".into();
            params.search_path = "\"$user\", public".into();
            params.application_name = None;
            finish_authentication(client, &params).await?;
        }
        Ok(())
    }
}

pub struct Handlers {
    backend: Arc<Backend>,
    startup: Arc<Startup>,
}

impl Handlers {
    pub fn new(db: Arc<Database>, stream: Arc<StreamRuntime>) -> Self {
        Handlers {
            backend: Arc::new(Backend::new(db, stream)),
            startup: Arc::new(Startup),
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.backend)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.backend)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.startup)
    }
}
