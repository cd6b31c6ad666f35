//! `flowlog query` and `flowlog report`: what the `flowlog` binary runs once it
//! has parsed the flags.
//!
//! Nothing reaches `out` (stdout) unless the whole result is ready: a query that
//! fails prints only its error (the caller writes it to stderr and exits with
//! [`QueryError::exit_code`]). A closed stdout (`| head`) ends the output quietly.

use std::{
    io::{self, Read as _, Write},
    path::PathBuf,
};

use chrono_tz::Tz;

use crate::{
    engine::{Engine, EngineOptions},
    error::QueryError,
    functions::PROCESS_TZ,
    output::{self, OutputFormat},
    report::{self, NamedCidr, ReportOptions},
    time::TimeRange,
};

/// The display zone from `TZ` (warning on stderr and UTC if it names no zone).
pub fn display_tz() -> Tz {
    match &*PROCESS_TZ {
        Ok(tz) => *tz,
        Err(msg) => {
            eprintln!("flowlog: warning: {msg}; showing times in UTC");
            Tz::UTC
        }
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Time range flags, as given.
#[derive(Clone, Debug, Default)]
pub struct RangeFlags {
    pub since: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl RangeFlags {
    fn range(&self) -> Result<TimeRange, QueryError> {
        TimeRange::from_flags(
            self.since.as_deref(),
            self.from.as_deref(),
            self.to.as_deref(),
            now(),
        )
    }
}

fn write_out(out: &mut dyn Write, bytes: &[u8], what: &str) -> Result<(), QueryError> {
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(QueryError::Output {
            what: what.to_string(),
            source,
        }),
    }
}

/// `flowlog query`.
#[derive(Clone, Debug)]
pub struct QueryCommand {
    pub logs: Vec<PathBuf>,
    pub format: OutputFormat,
    pub range: RangeFlags,
    /// The query; `-` reads it from stdin.
    pub query: String,
}

impl QueryCommand {
    /// Run the query and print its result to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), QueryError> {
        let query = if self.query == "-" {
            let mut q = String::new();
            io::stdin()
                .read_to_string(&mut q)
                .map_err(|e| QueryError::Setup(format!("reading the query from stdin: {e}")))?;
            q
        } else {
            self.query.clone()
        };
        let mut engine = Engine::open(&EngineOptions {
            logs: self.logs.clone(),
            range: self.range.range()?,
            tz: display_tz(),
            threads: None,
        })?;
        let result = engine.query(&query)?;
        let mut buf = Vec::new();
        output::write(&result, self.format, &mut buf).map_err(|source| QueryError::Output {
            what: "the result".into(),
            source,
        })?;
        write_out(out, &buf, "stdout")
    }
}

/// `flowlog report`.
#[derive(Clone, Debug)]
pub struct ReportCommand {
    pub logs: Vec<PathBuf>,
    /// `NAME=CIDR` flags.
    pub cidrs: Vec<String>,
    pub out: PathBuf,
    pub range: RangeFlags,
}

impl ReportCommand {
    /// Run every report query, write the HTML page, print the tables to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), QueryError> {
        let cidrs = self
            .cidrs
            .iter()
            .map(|c| NamedCidr::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut engine = Engine::open(&EngineOptions {
            logs: self.logs.clone(),
            range: self.range.range()?,
            tz: display_tz(),
            threads: None,
        })?;
        let report = report::build(&mut engine, &ReportOptions { cidrs }, now())?;
        let page = report::html::render(&report);
        std::fs::write(&self.out, page).map_err(|source| QueryError::Output {
            what: self.out.display().to_string(),
            source,
        })?;
        let mut buf = Vec::new();
        report::write_terminal(&report, &mut buf).map_err(|source| QueryError::Output {
            what: "the tables".into(),
            source,
        })?;
        writeln!(buf, "Report written to {}", self.out.display()).expect("vec write");
        write_out(out, &buf, "stdout")
    }
}
