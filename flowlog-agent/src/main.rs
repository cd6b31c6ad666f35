//! `flowlog`: VPC-style flow logs for any Linux node. See `flowlog run --help`.
use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use flowlog_agent::{
    agent,
    config::{Cli, Command, Config},
    instance::control::Request,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            // rskafka (the kafka sink's client) logs every reconnection attempt; the
            // spool logs a delivery failure once, with its error.
            EnvFilter::try_from_env("FLOWLOG_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,rskafka=error")),
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
        Command::Create(a) => ctl::create(a),
        Command::Start(a) => ctl::simple(&a.socket.socket, Request::Start { name: a.name }),
        Command::Stop(a) => ctl::simple(&a.socket.socket, Request::Stop { name: a.name }),
        Command::Delete(a) => ctl::simple(&a.socket.socket, Request::Delete { name: a.name }),
        Command::List(a) => ctl::list(&a),
        Command::Describe(a) => ctl::describe(&a.socket.socket, a.name),
    }
}

/// The control commands: one request to the running agent's socket. A request the
/// agent refuses exits 2 with its message; an agent that cannot be reached exits 1.
mod ctl {
    use std::{path::Path, process::ExitCode};

    use flowlog_agent::{
        agent::list_table,
        config::{CreateArgs, EXIT_USAGE},
        instance::{
            control::{call, Request, Response},
            FlowLogFile,
        },
    };

    fn send(socket: &Path, req: &Request) -> Result<Response, ExitCode> {
        match call(socket, req) {
            Ok(r) if r.ok => Ok(r),
            Ok(r) => {
                eprintln!(
                    "flowlog: error: {}",
                    r.error
                        .as_deref()
                        .unwrap_or("the agent refused the request")
                );
                Err(ExitCode::from(EXIT_USAGE as u8))
            }
            Err(e) => {
                eprintln!("flowlog: error: {e}");
                Err(ExitCode::FAILURE)
            }
        }
    }

    fn print_json<T: serde::Serialize>(v: &T) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("status serializes")
        );
    }

    pub fn create(a: CreateArgs) -> ExitCode {
        let req = Request::Create {
            flow_log: Box::new(FlowLogFile {
                name: a.name,
                description: a.description.unwrap_or_default(),
                resource_type: a.resource_type,
                resource_ids: a.resource_ids,
                window: a.window,
                traffic_type: a.traffic_type,
                ip_version: a.ip_version,
                traffic_path: a.traffic_path,
                output: a.output,
                sinks: a.sinks,
                state: a.inactive.then(|| "inactive".to_owned()),
            }),
        };
        match send(&a.socket.socket, &req) {
            Ok(r) => {
                if let Some(s) = r.flow_log {
                    print_json(&s);
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    }

    pub fn simple(socket: &Path, req: Request) -> ExitCode {
        match send(socket, &req) {
            Ok(r) => {
                if let Some(s) = r.flow_log {
                    print_json(&s);
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    }

    pub fn list(a: &flowlog_agent::config::SocketArgs) -> ExitCode {
        match send(&a.socket, &Request::List) {
            Ok(r) => {
                print!("{}", list_table(&r.flow_logs.unwrap_or_default()));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }
    }

    pub fn describe(socket: &Path, name: String) -> ExitCode {
        simple(socket, Request::Describe { name })
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
