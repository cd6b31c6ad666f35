//! `cargo xtask`: the few commands a developer or an operator types.
//!
//! - `cargo xtask run -- <flowlog args>`: build the agent (release, with its eBPF
//!   object) and run it, through `sudo` when not root.
//! - `cargo xtask test`: unit tests (unprivileged), then the kernel and namespace
//!   integration tests as root.
//! - `cargo xtask image`: the container image (podman), and its size.
//! - `cargo xtask soak --minutes 30`: the long soak run.
//! - `cargo xtask fuzz`: the parser fuzz targets (`fuzz/`, cargo-fuzz), a while each.
mod bench;
mod fuzz;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "flowlog developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the agent in release mode and run it: `cargo xtask run -- run --interface eth0`
    /// (the leading `run` may be left out).
    Run {
        /// Arguments for `flowlog`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test tier: unit tests, then kernel and network-namespace tests as root.
    Test {
        /// Extra arguments for the root test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the agent's container image (release, from scratch: the binary and the
    /// libraries it loads) with podman and print its size.
    Image {
        /// Image name and tag.
        #[arg(long, default_value = concat!("localhost/flowlog:", env!("CARGO_PKG_VERSION")))]
        tag: String,
    },
    /// The soak run (root): mixed traffic, 10 s windows, policy reloads and flow log
    /// changes; prints RSS, totals and errors, fails if RSS grows over 5 % after the
    /// warm-up, a total is off or an error is logged.
    Soak {
        /// Length of the run.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
    /// Benchmarks (root): kernel cost per packet, veth throughput vs. softflowd, drain
    /// time and agent memory; writes target/bench/summary.json.
    Bench(bench::BenchArgs),
    /// Fuzz the user-space parsers (cargo-fuzz, the pinned nightly) for N seconds per
    /// target on a copy of the corpus in fuzz/corpus; fails on a crash, naming its input.
    Fuzz(fuzz::FuzzArgs),
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn status(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("running {shown}"))?;
    if !st.success() {
        bail!("{shown} failed: {st}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A command that runs as root: directly when we are root, else through sudo.
fn privileged(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the `flowlog` binary (`--locked`) and returns its path: release or debug,
/// lean or with the pod-metadata watcher (feature `kubernetes`).
fn build_agent(release: bool, kubernetes: bool) -> Result<PathBuf> {
    let mut build = cargo();
    build.args([
        "build",
        "--locked",
        "-p",
        "flowlog-agent",
        "--bin",
        "flowlog",
    ]);
    if release {
        build.arg("--release");
    }
    if kubernetes {
        build.args(["--features", "kubernetes"]);
    }
    status(build)?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("flowlog"))
}

fn run(mut args: Vec<String>) -> Result<()> {
    // The lean agent: no query engine (that is the separate `flowlog-query` binary),
    // no Kubernetes client.
    let bin = build_agent(true, false)?;
    if args.first().is_none_or(|a| a.starts_with('-')) {
        args.insert(0, "run".into());
    }
    let mut cmd = privileged(&bin);
    cmd.args(&args);
    status(cmd)
}

fn test(args: Vec<String>) -> Result<()> {
    // Tier 1: unit tests and the CLI tests of `flowlog` and `flowlog-query`,
    // unprivileged (default members). This also builds target/debug/flowlog (the
    // agent's CLI tests need it), so the root tiers reuse it and nothing is built
    // twice with another feature set. The agent is built with every optional part
    // (pod metadata), so the root tiers test it too; `cargo xtask run` builds the
    // lean agent.
    let mut unit = cargo();
    unit.args(["test", "--locked", "--features", "flowlog-agent/kubernetes"]);
    status(unit)?;

    // Tiers 2 and 3: kernel (BPF_PROG_TEST_RUN) and network-namespace tests, as root.
    let mut bin = target_dir().join("debug/flowlog");
    if !bin.is_file() {
        bin = build_agent(false, true)?;
    }
    let mut build_tests = cargo();
    build_tests.args(["test", "--locked", "-p", "flowlog-tests", "--no-run"]);
    status(build_tests)?;

    let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut root = privileged(Path::new(&cargo_bin));
    root.current_dir(workspace_root())
        .env("FLOWLOG_BIN", &bin)
        .args(["test", "--locked", "-p", "flowlog-tests", "--"])
        .args(&args);
    status(root)
}

fn image(tag: &str) -> Result<()> {
    // The image is what runs on Kubernetes: with the pod-metadata watcher.
    let bin = build_agent(true, true)?;
    let script = workspace_root().join("deploy/image/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&bin)
        .arg(tag)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let size: u64 = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no image size in the output of build.sh: {text}"))?;
    println!("{tag}: {:.1} MB ({size} bytes)", size as f64 / 1e6);
    Ok(())
}

fn soak(minutes: u64) -> Result<()> {
    let bin = build_agent(false, false)?;
    let mut build_tests = cargo();
    build_tests.args([
        "test",
        "--locked",
        "-p",
        "flowlog-tests",
        "--test",
        "soak",
        "--no-run",
    ]);
    status(build_tests)?;
    let cargo_bin = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut root = privileged(Path::new(&cargo_bin));
    root.current_dir(workspace_root())
        .env("FLOWLOG_BIN", &bin)
        .env("FLOWLOG_SOAK_SECS", (minutes * 60).to_string())
        .args([
            "test",
            "--locked",
            "-p",
            "flowlog-tests",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ]);
    status(root)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Task::Run { args } => run(args),
        Task::Test { args } => test(args),
        Task::Image { tag } => image(&tag),
        Task::Bench(args) => bench::run(args),
        Task::Soak { minutes } => soak(minutes),
        Task::Fuzz(args) => fuzz::run(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
