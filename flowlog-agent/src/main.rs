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
        Command::Query(args) => analysis::exec("query", &args.args),
        Command::Report(args) => analysis::exec("report", &args.args),
    }
}

/// `flowlog query` and `flowlog report` run the `flowlog-query` binary: the SQL engine
/// (Apache DataFusion) is a separate install so that the agent stays small and quick
/// to build.
mod analysis {
    use std::{
        env,
        ffi::OsString,
        os::unix::process::CommandExt as _,
        path::PathBuf,
        process::{Command, ExitCode},
    };

    /// Name of the analysis binary.
    pub const BINARY: &str = "flowlog-query";
    /// The documented install command (README, "Querying the logs").
    pub const INSTALL: &str = "cargo install --locked --path flowlog-query";

    /// `flowlog-query` next to this executable first (an install or a build tree puts
    /// both in one directory), then on `PATH`.
    fn locate() -> Option<PathBuf> {
        let beside = env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join(BINARY)));
        let on_path = env::var_os("PATH")
            .map(|p| {
                env::split_paths(&p)
                    .map(|d| d.join(BINARY))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        beside.into_iter().chain(on_path).find(|p| p.is_file())
    }

    /// Replace this process with `flowlog-query <sub> <args>` (same stdin, stdout,
    /// stderr and exit code). Returns only on failure.
    pub fn exec(sub: &str, args: &[String]) -> ExitCode {
        let Some(bin) = locate() else {
            eprintln!(
                "flowlog: error: `flowlog {sub}` needs the `{BINARY}` binary, which is not \
                 installed (the SQL engine is kept out of the agent). Install it from the \
                 flowlog source tree with:\n    {INSTALL}\nor put `{BINARY}` next to `flowlog` \
                 or on PATH."
            );
            return ExitCode::from(flowlog_agent::config::EXIT_USAGE as u8);
        };
        let mut cmd = Command::new(&bin);
        cmd.arg(sub).args(args.iter().map(OsString::from));
        let err = cmd.exec();
        eprintln!("flowlog: error: running {}: {err}", bin.display());
        ExitCode::FAILURE
    }
}
