//! The query engine: Apache DataFusion over the JSON-lines files, with the table
//! `log` (see [`crate::schema`]) and the log service's query shape.
//!
//! The files are one DataFusion table of strings (`flowlog_raw`): the
//! JSON reader decodes each line against the fixed field list, so extension fields
//! load as columns where present and as NULL elsewhere, and fields it does not
//! know are skipped. Parquet files (the agent's `parquet` sink, typed columns) are a
//! second listing table whose integer columns are turned back into the text the
//! JSON form holds (NULL stays NULL, as a `-` does after typing); with both kinds
//! present `flowlog_raw` is their `UNION ALL`, so every query, search and time range
//! gives the same answer over either form of the same records. Large files are split into byte ranges read in parallel, one
//! per core. For each query, `log` is registered as a view over that table that
//! applies the query's search part and the time range (both on the raw text), and
//! types the columns. The SQL part is parsed by DataFusion's parser, rewritten
//! ([`crate::statement`]) and planned against it, so a query sees `log` already
//! filtered, as in the log service.
//!
//! Results are collected in full before anything is printed, so a query that fails
//! while running prints nothing.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
};

use chrono_tz::Tz;
use datafusion::{
    arrow::{datatypes::SchemaRef, record_batch::RecordBatch},
    catalog::MemTable,
    common::{config::Dialect, DataFusionError},
    datasource::{
        file_format::{json::JsonFormat, parquet::ParquetFormat},
        listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl},
    },
    execution::{context::SessionContext, SessionStateBuilder},
    prelude::SessionConfig,
    sql::{
        parser::Statement as DfStatement,
        sqlparser::ast::{SetExpr, Statement, TableWithJoins},
    },
};

use crate::{
    error::{Position, QueryError},
    functions, schema, search,
    statement::{self, Split},
    time::TimeRange,
};

/// File name extensions read from a `--logs` directory.
pub const LOG_EXTENSIONS: [&str; 4] = ["json", "jsonl", "log", "parquet"];

/// Extension of Parquet files (every other log file is JSON lines).
pub const PARQUET_EXTENSION: &str = "parquet";

/// What to query.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Log files, or directories of them (their `*.json`, `*.jsonl`, `*.log`,
    /// `*.parquet`, recursively).
    pub logs: Vec<PathBuf>,
    /// Records whose `start` is in this range.
    pub range: TimeRange,
    /// Zone timestamps are shown (and days truncated) in.
    pub tz: Tz,
    /// Worker threads and scan partitions (default: the available cores).
    pub threads: Option<usize>,
}

/// A query's full result.
#[derive(Clone, Debug)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    /// Rows in all batches.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A query engine over one set of log files.
pub struct Engine {
    runtime: tokio::runtime::Runtime,
    ctx: SessionContext,
    tz: Tz,
    range: TimeRange,
    files: Vec<PathBuf>,
    from_log: Vec<TableWithJoins>,
}

/// The files `paths` stand for: files as given, directories' log files
/// (recursively, as in a `dt=.../hour=...` tree; hidden entries skipped), in order,
/// without duplicates.
pub fn log_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, QueryError> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| QueryError::LogPath {
            path: path.clone(),
            source,
        })?;
        let mut found = Vec::new();
        if meta.is_dir() {
            collect_dir(path, &mut found)?;
            found.sort();
        } else {
            found.push(path.clone());
        }
        for p in found {
            let canonical = std::fs::canonicalize(&p).map_err(|source| QueryError::LogPath {
                path: p.clone(),
                source,
            })?;
            if seen.insert(canonical.clone()) {
                out.push(canonical);
            }
        }
    }
    Ok(out)
}

/// The log files under `dir`, recursively.
fn collect_dir(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), QueryError> {
    let io_err = |source| QueryError::LogPath {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let p = entry.map_err(io_err)?.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            collect_dir(&p, found)?;
            continue;
        }
        let ext_ok = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| LOG_EXTENSIONS.contains(&e));
        if ext_ok && p.is_file() {
            found.push(p);
        }
    }
    Ok(())
}

fn is_parquet(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()) == Some(PARQUET_EXTENSION)
}

/// A `file://` URL for an absolute path, every byte but unreserved ones and `/`
/// percent-encoded (so no character is taken for a glob or URL syntax).
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'.' | b'_' | b'~') {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

fn setup_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::Setup(e.to_string())
}

impl Engine {
    /// Find the files and register them.
    pub fn open(opts: &EngineOptions) -> Result<Engine, QueryError> {
        let threads = opts
            .threads
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
            .max(1);
        let files = log_files(&opts.logs)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("flowlog-query")
            .enable_all()
            .build()
            .map_err(setup_err)?;

        let mut config = SessionConfig::new()
            .with_target_partitions(threads)
            .with_information_schema(false)
            .set_bool("datafusion.sql_parser.collect_spans", true)
            .set_str("datafusion.execution.time_zone", opts.tz.name());
        config.options_mut().sql_parser.dialect = Dialect::Generic;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let ctx = SessionContext::new_with_state(state);
        for udf in functions::all(opts.tz) {
            ctx.register_udf(udf);
        }

        // Empty files hold no records (and the JSON reader need not see them).
        let nonempty: Vec<&PathBuf> = files
            .iter()
            .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(true))
            .collect();
        let (parquet, json): (Vec<&PathBuf>, Vec<&PathBuf>) =
            nonempty.into_iter().partition(|p| is_parquet(p));
        let listing = |paths: &[&PathBuf],
                       options: ListingOptions,
                       schema: SchemaRef|
         -> Result<Arc<dyn datafusion::catalog::TableProvider>, QueryError> {
            let urls = paths
                .iter()
                .map(|p| ListingTableUrl::parse(file_url(p)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(setup_err)?;
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options.with_file_extension(""))
                .with_schema(schema);
            Ok(Arc::new(ListingTable::try_new(config).map_err(setup_err)?))
        };
        let raw = schema::raw_schema();
        let json_table: Arc<dyn datafusion::catalog::TableProvider> = if json.is_empty() {
            Arc::new(MemTable::try_new(raw.clone(), vec![vec![]]).map_err(setup_err)?)
        } else {
            listing(
                &json,
                ListingOptions::new(Arc::new(JsonFormat::default())),
                raw.clone(),
            )?
        };
        if parquet.is_empty() {
            ctx.register_table(schema::RAW_TABLE, json_table)
                .map_err(setup_err)?;
        } else {
            let pq = listing(
                &parquet,
                ListingOptions::new(Arc::new(ParquetFormat::default())),
                schema::parquet_schema(),
            )?;
            ctx.register_table(schema::RAW_JSON_TABLE, json_table)
                .map_err(setup_err)?;
            ctx.register_table(schema::RAW_PARQUET_TABLE, pq)
                .map_err(setup_err)?;
            let sql = format!(
                "SELECT * FROM {} UNION ALL SELECT {} FROM {}",
                schema::RAW_JSON_TABLE,
                schema::parquet_as_text(),
                schema::RAW_PARQUET_TABLE
            );
            let view = runtime
                .block_on(ctx.sql(&sql))
                .map_err(|e| setup_err(format!("combining JSON and Parquet files: {e}")))?
                .into_view();
            ctx.register_table(schema::RAW_TABLE, view)
                .map_err(setup_err)?;
        }

        let from_log = {
            let state = ctx.state();
            let parsed = state
                .sql_to_statement("SELECT 1 FROM log", &Dialect::Generic)
                .map_err(setup_err)?;
            match parsed {
                DfStatement::Statement(s) => match *s {
                    Statement::Query(q) => match *q.body {
                        SetExpr::Select(sel) => sel.from,
                        _ => return Err(setup_err("unexpected parse of SELECT 1 FROM log")),
                    },
                    _ => return Err(setup_err("unexpected parse of SELECT 1 FROM log")),
                },
                _ => return Err(setup_err("unexpected parse of SELECT 1 FROM log")),
            }
        };

        Ok(Engine {
            runtime,
            ctx,
            tz: opts.tz,
            range: opts.range,
            files,
            from_log,
        })
    }

    /// The display zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The time range applied to every query.
    pub fn range(&self) -> TimeRange {
        self.range
    }

    /// Run a `<search> | <SQL>` query (or SQL alone, or a search alone) and
    /// collect its whole result.
    pub fn query(&mut self, text: &str) -> Result<QueryResult, QueryError> {
        let split = statement::split(text);
        let search = search::parse(split.search)
            .map_err(|e| QueryError::bad_query(format!("search: {e}"), text, Some(e.offset)))?;
        let runtime = &self.runtime;
        runtime.block_on(self.run(text, &split, &search))
    }

    async fn run(
        &self,
        text: &str,
        split: &Split<'_>,
        search: &search::Search,
    ) -> Result<QueryResult, QueryError> {
        self.register_view(search).await?;

        let sql = split.sql.unwrap_or("SELECT * FROM log ORDER BY __time__");
        let state = self.ctx.state();
        let bad = |e: DataFusionError| sql_error(&e, text, split);
        let mut statement = state
            .sql_to_statement(sql, &Dialect::Generic)
            .map_err(bad)?;
        if let DfStatement::Statement(s) = &mut statement {
            statement::rewrite(s, self.from_log.clone());
        }
        let plan = state.statement_to_plan(statement).await.map_err(bad)?;
        datafusion::execution::context::SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| QueryError::bad_query(e.to_string(), text, None))?;
        let df = self.ctx.execute_logical_plan(plan).await.map_err(bad)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| run_error(e, text))?;
        Ok(QueryResult { schema, batches })
    }

    /// (Re)register `log` as the raw table filtered by `search` and the time
    /// range, with typed columns.
    async fn register_view(&self, search: &search::Search) -> Result<(), QueryError> {
        let mut filters = Vec::new();
        if !search.is_all() {
            filters.push(search.to_sql());
        }
        let start = "TRY_CAST(\"start\" AS BIGINT)";
        if let Some(from) = self.range.from {
            filters.push(format!("{start} >= {from}"));
        }
        if let Some(to) = self.range.to {
            filters.push(format!("{start} < {to}"));
        }
        let mut sql = format!(
            "SELECT {} FROM {}",
            schema::typed_projection(),
            schema::RAW_TABLE
        );
        if !filters.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&filters.join(" AND "));
        }
        let view = self
            .ctx
            .sql(&sql)
            .await
            .map_err(|e| QueryError::Setup(format!("building the log view: {e}")))?
            .into_view();
        self.ctx
            .deregister_table(schema::TABLE)
            .map_err(setup_err)?;
        self.ctx
            .register_table(schema::TABLE, view)
            .map_err(setup_err)?;
        Ok(())
    }
}

/// A parse or planning error: a bad query, with its position where the engine
/// gives one (parser messages carry "Line: L, Column: C"; planner errors a span).
fn sql_error(e: &DataFusionError, text: &str, split: &Split<'_>) -> QueryError {
    let message = e.to_string();
    let mut position: Option<Position> = None;
    if let Some(span) = e.diagnostic().and_then(|d| d.span) {
        if span.start.line > 0 {
            position = Some(split.sql_position(
                text,
                span.start.line as usize,
                span.start.column as usize,
            ));
        }
    }
    if position.is_none() {
        if let Some((line, column)) = statement::parser_location(&message) {
            position = Some(split.sql_position(text, line, column));
        }
    }
    QueryError::bad_query_at(message, text, position)
}

/// An error while running: reading the files (exit 1), or the query's own
/// (division by zero, a bad date_trunc unit...: a bad query).
fn run_error(e: DataFusionError, text: &str) -> QueryError {
    use datafusion::arrow::error::ArrowError;
    let io = e.iter().any(|e| match e {
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ResourcesExhausted(_) => true,
        DataFusionError::ArrowError(a, _) => {
            matches!(**a, ArrowError::JsonError(_) | ArrowError::IoError(..))
        }
        _ => false,
    });
    if io {
        QueryError::Execution(e)
    } else {
        QueryError::bad_query(e.to_string(), text, None)
    }
}
