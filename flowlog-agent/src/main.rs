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
    }
}
