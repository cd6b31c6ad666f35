//! `flowlog`: VPC-style flow logs for any Linux node. See `flowlog run --help`.
use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use flowlog_agent::{
    agent,
    config::{Cli, Command, Config},
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_env("FLOWLOG_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Run(args) => {
            let cfg = match Config::from_args(&args) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("flowlog: error: {e}");
                    return ExitCode::from(e.exit_code() as u8);
                }
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("flowlog: error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(agent::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Every error's message already carries its cause.
                    eprintln!("flowlog: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        #[cfg(feature = "query")]
        Command::Query(args) => query::run(&args),
        #[cfg(feature = "query")]
        Command::Report(args) => query::report(&args),
    }
}

/// `flowlog query` and `flowlog report`: the work is in `flowlog_query::cli`.
#[cfg(feature = "query")]
mod query {
    use std::process::ExitCode;

    use flowlog_agent::config::{QueryArgs, QueryFormat, RangeArgs, ReportArgs};
    use flowlog_query::{
        cli::{QueryCommand, RangeFlags, ReportCommand},
        OutputFormat, QueryError,
    };

    fn range(r: &RangeArgs) -> RangeFlags {
        RangeFlags {
            since: r.since.clone(),
            from: r.from.clone(),
            to: r.to.clone(),
        }
    }

    fn exit(result: Result<(), QueryError>) -> ExitCode {
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flowlog: error: {e}");
                ExitCode::from(e.exit_code())
            }
        }
    }

    pub fn run(args: &QueryArgs) -> ExitCode {
        let cmd = QueryCommand {
            logs: args.logs.clone(),
            format: match args.format {
                QueryFormat::Table => OutputFormat::Table,
                QueryFormat::Csv => OutputFormat::Csv,
                QueryFormat::Json => OutputFormat::Json,
            },
            range: range(&args.range),
            query: args.query.clone(),
        };
        exit(cmd.run(&mut std::io::stdout().lock()))
    }

    pub fn report(args: &ReportArgs) -> ExitCode {
        let cmd = ReportCommand {
            logs: args.logs.clone(),
            cidrs: args.cidrs.clone(),
            out: args.out.clone(),
            range: range(&args.range),
        };
        exit(cmd.run(&mut std::io::stdout().lock()))
    }
}
