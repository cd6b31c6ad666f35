//! `flowlog-query`: SQL over flow log files and the built-in reports, the analysis
//! side of flowlog, kept out of the agent binary (Apache DataFusion is large and slow
//! to build; a capture node does not need it).
//!
//! ```text
//! flowlog-query query  --logs PATH [--format table|csv|json] [--since D | --from T --to T] QUERY
//! flowlog-query report --logs PATH [--cidr NAME=CIDR ...] [--out FILE] [--since D | ...]
//! ```
//!
//! `flowlog query ...` and `flowlog report ...` run this binary with the same
//! arguments. Exit codes: 0, 2 for a bad query or bad flags, 1 for other failures.
use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use flowlog_query::{
    cli::{QueryCommand, RangeFlags, ReportCommand},
    OutputFormat, QueryError,
};

/// `flowlog-query` command line.
#[derive(Debug, Parser)]
#[command(
    name = "flowlog-query",
    version,
    about = "SQL and reports over flowlog's flow log files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL over flow log files, as in the log service: '<search> | <SQL>' over
    /// the table `log` (see the README's "Querying the logs").
    Query(QueryArgs),
    /// Run the built-in reports over flow log files: print their tables and write
    /// one self-contained HTML page with charts.
    Report(ReportArgs),
}

/// Time range of `flowlog query` / `flowlog report`, on the records' `start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
struct RangeArgs {
    /// Only records that started in the last DUR: 15m, 2h, 1d, 1h30m.
    #[arg(long, value_name = "DUR", conflicts_with_all = ["from", "to"])]
    since: Option<String>,
    /// Only records that started at or after T (unix seconds or RFC 3339).
    #[arg(long, value_name = "T")]
    from: Option<String>,
    /// Only records that started before T (unix seconds or RFC 3339).
    #[arg(long, value_name = "T")]
    to: Option<String>,
}

/// Flags of `flowlog query`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
struct QueryArgs {
    /// A log file, or a directory of them (its *.json, *.jsonl, *.log); repeatable.
    #[arg(long = "logs", value_name = "PATH", required = true)]
    logs: Vec<PathBuf>,
    /// Output: an aligned table, CSV, or JSON lines (one object per row).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = QueryFormat::Table)]
    format: QueryFormat,
    #[command(flatten)]
    range: RangeArgs,
    /// '<search> | <SQL>', e.g. '* | select count(*)'; '-' reads it from stdin.
    #[arg(value_name = "QUERY", allow_hyphen_values = true)]
    query: String,
}

/// Output format of `flowlog query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum QueryFormat {
    Table,
    Csv,
    Json,
}

/// Flags of `flowlog report`.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
struct ReportArgs {
    /// A log file, or a directory of them (its *.json, *.jsonl, *.log); repeatable.
    #[arg(long = "logs", value_name = "PATH", required = true)]
    logs: Vec<PathBuf>,
    /// A named block for the CIDR-to-CIDR section, NAME=CIDR; repeatable, first
    /// match wins [default: the private ranges]
    #[arg(long = "cidr", value_name = "NAME=CIDR")]
    cidrs: Vec<String>,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    out: PathBuf,
    #[command(flatten)]
    range: RangeArgs,
}

fn range(r: &RangeArgs) -> RangeFlags {
    RangeFlags {
        since: r.since.clone(),
        from: r.from.clone(),
        to: r.to.clone(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = &mut std::io::stdout().lock();
    let result: Result<(), QueryError> = match cli.command {
        Command::Query(args) => QueryCommand {
            logs: args.logs,
            format: match args.format {
                QueryFormat::Table => OutputFormat::Table,
                QueryFormat::Csv => OutputFormat::Csv,
                QueryFormat::Json => OutputFormat::Json,
            },
            range: range(&args.range),
            query: args.query,
        }
        .run(out),
        Command::Report(args) => ReportCommand {
            logs: args.logs,
            cidrs: args.cidrs,
            out: args.out,
            range: range(&args.range),
        }
        .run(out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowlog: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_report_flags() {
        let cli = Cli::try_parse_from([
            "flowlog-query",
            "query",
            "--logs",
            "a.log",
            "--logs",
            "dir",
            "--format",
            "json",
            "--since",
            "15m",
            "-- comment\n* | select 1",
        ])
        .unwrap();
        let Command::Query(q) = cli.command else {
            panic!("not query")
        };
        assert_eq!(q.logs, [PathBuf::from("a.log"), PathBuf::from("dir")]);
        assert_eq!(q.format, QueryFormat::Json);
        assert_eq!(q.range.since.as_deref(), Some("15m"));
        assert_eq!(q.query, "-- comment\n* | select 1");
        assert!(Cli::try_parse_from([
            "flowlog-query",
            "query",
            "--logs",
            "a",
            "--since",
            "1m",
            "--from",
            "1",
            "*"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["flowlog-query", "query", "*"]).is_err());

        let cli = Cli::try_parse_from([
            "flowlog-query",
            "report",
            "--logs",
            "d",
            "--cidr",
            "a=10.0.0.0/8",
            "--from",
            "1",
            "--to",
            "2",
        ])
        .unwrap();
        let Command::Report(r) = cli.command else {
            panic!("not report")
        };
        assert_eq!(r.cidrs, ["a=10.0.0.0/8"]);
        assert_eq!(r.out, PathBuf::from("report.html"));
        assert_eq!(
            (r.range.from.as_deref(), r.range.to.as_deref()),
            (Some("1"), Some("2"))
        );
    }
}
