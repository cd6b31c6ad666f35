//! SQL over flowlog's flow logs, run locally: the log service's `<search> | <SQL>`
//! queries over the JSON-lines files the agent writes, and reports with charts.
//!
//! * [`Engine`]: Apache DataFusion with the table `log` ([`schema`]) over log files
//!   or directories, the log service's query shape ([`statement`], [`search`]) and
//!   functions ([`functions`]), results collected in full.
//! * [`output`]: aligned table, CSV or JSON lines.
//! * [`report`]: the flow log dashboards (overview, policy, interfaces, host to
//!   host, CIDR to CIDR) as queries run through the same engine, printed as
//!   tables and written as one self-contained HTML page with SVG charts.
//! * [`cli`]: `flowlog query` and `flowlog report` (the `flowlog` binary parses
//!   the flags).
//! * [`sample`]: deterministic generated records, for tests, benchmarks and demos.

pub mod cli;
pub mod engine;
pub mod error;
pub mod functions;
pub mod output;
pub mod report;
pub mod sample;
pub mod schema;
pub mod search;
pub mod statement;
pub mod time;

pub use engine::{Engine, EngineOptions, QueryResult};
pub use error::{Position, QueryError};
pub use output::OutputFormat;
pub use time::TimeRange;
