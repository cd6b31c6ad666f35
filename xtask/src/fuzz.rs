//! `cargo xtask fuzz [--seconds N] [TARGET...]`: the cargo-fuzz targets in `fuzz/`
//! (the user-space parsers), each run for N seconds on a copy of its committed corpus.
//!
//! - Built with the nightly pinned in `flowlog-ebpf/rust-toolchain.toml` (or
//!   `FLOWLOG_EBPF_TOOLCHAIN`) and `AYA_BUILD_SKIP=1`: the parsers never load the eBPF
//!   object, so it is not built. Build output goes to `target/fuzz/`.
//! - The corpus `fuzz/corpus/<target>/` is copied to `target/fuzz-corpus/<target>/`
//!   first, so a run never changes the repository; new inputs land in the copy.
//! - A crash fails the task, naming the input libFuzzer wrote to
//!   `target/fuzz-artifacts/<target>/` and how to reproduce it.
//!
//! cargo-fuzz itself is not installed here: `bash .ci/setup --tests` does it.
use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{target_dir, workspace_root};

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Seconds per target (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// CI mode: no sanitizer and a dev build (libFuzzer still catches panics and
    /// aborts), and by default every target but `search` (which builds DataFusion:
    /// 45+ minutes with ASan on 2 cores; name it to include it).
    #[arg(long)]
    light: bool,
    /// Targets to run (default: every target of fuzz/Cargo.toml).
    targets: Vec<String>,
}

/// `cargo fuzz build|run` flags of a mode, and the features the targets need.
fn build_flags(light: bool, targets: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    if light {
        flags.extend(["--sanitizer".into(), "none".into(), "--dev".into()]);
    }
    if targets.iter().any(|t| t == "search") {
        flags.extend(["--features".into(), "search".into()]);
    }
    flags
}

/// The pinned nightly: `FLOWLOG_EBPF_TOOLCHAIN`, else `channel` of the eBPF pin file
/// (the one place naming it, read the same way by `.ci/setup` and the agent's build.rs).
fn nightly() -> Result<String> {
    if let Some(tc) = std::env::var("FLOWLOG_EBPF_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(tc);
    }
    let pin = workspace_root().join("flowlog-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&pin).with_context(|| format!("reading {}", pin.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .find(|v| !v.is_empty())
        .with_context(|| format!("{} has no `channel = \"...\"`", pin.display()))
}

/// `cargo fuzz <sub>` under the pinned nightly, from the workspace root, without the
/// toolchain variables of the cargo that runs xtask.
fn cargo_fuzz(toolchain: &str, sub: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", toolchain, "cargo", "fuzz", sub])
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("AYA_BUILD_SKIP", "1");
    cmd
}

fn check_tools(toolchain: &str) -> Result<()> {
    match Command::new("cargo-fuzz").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(_) | Err(_) => bail!(
            "cargo-fuzz is not installed: run `cargo install cargo-fuzz --locked` \
             (`bash .ci/setup --tests` installs the version CI uses)"
        ),
    }
    let ok = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-V"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        bail!(
            "the nightly {toolchain} (pinned in flowlog-ebpf/rust-toolchain.toml) is not \
             installed: run `bash .ci/setup --tests`"
        );
    }
    Ok(())
}

/// The targets `cargo fuzz list` reports.
fn all_targets(toolchain: &str) -> Result<Vec<String>> {
    let mut list = cargo_fuzz(toolchain, "list");
    let out = list.output().context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Replaces `to` with a copy of the files of `from` (flat, as libFuzzer writes them).
fn copy_corpus(from: &Path, to: &Path) -> Result<usize> {
    if to.exists() {
        fs::remove_dir_all(to).with_context(|| format!("removing {}", to.display()))?;
    }
    fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut n = 0;
    if from.is_dir() {
        for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::copy(entry.path(), to.join(entry.file_name()))
                    .with_context(|| format!("copying {}", entry.path().display()))?;
                n += 1;
            }
        }
    }
    Ok(n)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .count()
        })
        .unwrap_or(0)
}

/// What libFuzzer's `-print_final_stats=1` reported.
#[derive(Default)]
struct Stats {
    runs: Option<u64>,
    execs_per_sec: Option<u64>,
}

fn stat(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim_start_matches(':')
        .trim()
        .parse()
        .ok()
}

/// Runs one target, relaying libFuzzer's output; returns its final stats, or the
/// crash inputs it wrote.
fn run_target(
    toolchain: &str,
    target: &str,
    seconds: u64,
    flags: &[String],
) -> Result<(Stats, usize, usize, PathBuf)> {
    let root = workspace_root();
    let corpus = target_dir().join("fuzz-corpus").join(target);
    let seeds = copy_corpus(&root.join("fuzz/corpus").join(target), &corpus)?;
    let artifacts = target_dir().join("fuzz-artifacts").join(target);
    fs::create_dir_all(&artifacts)?;
    let mut prefix = artifacts.clone().into_os_string();
    prefix.push("/");

    let mut cmd = cargo_fuzz(toolchain, "run");
    cmd.arg("--target-dir")
        .arg(target_dir().join("fuzz"))
        .args(flags)
        .arg(target)
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}", prefix.to_string_lossy()));
    let dict = root.join("fuzz/dict").join(format!("{target}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("running {shown}"))?;
    let mut stats = Stats::default();
    let mut crashes = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line?;
            eprintln!("{line}");
            if let Some(v) = stat(&line, "stat::number_of_executed_units") {
                stats.runs = Some(v);
            } else if let Some(v) = stat(&line, "stat::average_exec_per_sec") {
                stats.execs_per_sec = Some(v);
            } else if let Some(path) = line
                .split_once("Test unit written to ")
                .map(|(_, p)| p.trim().to_owned())
            {
                crashes.push(path);
            }
        }
    }
    let st = child.wait()?;
    if !st.success() || !crashes.is_empty() {
        let inputs = if crashes.is_empty() {
            format!("no crash input reported; see {}", artifacts.display())
        } else {
            crashes.join(", ")
        };
        bail!(
            "fuzz target {target} failed ({st}); crash input: {inputs}\n  reproduce: \
             AYA_BUILD_SKIP=1 cargo +{toolchain} fuzz run --target-dir target/fuzz {target} \
             <input>\n  minimize:  AYA_BUILD_SKIP=1 cargo +{toolchain} fuzz tmin --target-dir \
             target/fuzz {target} <input>"
        );
    }
    Ok((stats, seeds, count_files(&corpus), corpus))
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let toolchain = nightly()?;
    check_tools(&toolchain)?;
    let known = all_targets(&toolchain)?;
    let targets = if args.targets.is_empty() {
        known
            .iter()
            .filter(|t| !(args.light && t.as_str() == "search"))
            .cloned()
            .collect()
    } else {
        for t in &args.targets {
            if !known.contains(t) {
                bail!(
                    "no fuzz target {t:?}; the targets are: {}",
                    known.join(", ")
                );
            }
        }
        args.targets
    };

    // One build of every target first (the sanitizer build of the parsers and their
    // dependencies), timed apart from the runs.
    let started = Instant::now();
    let flags = build_flags(args.light, &targets);
    let mut build = cargo_fuzz(&toolchain, "build");
    build
        .arg("--target-dir")
        .arg(target_dir().join("fuzz"))
        .args(&flags);
    // Targets whose features are off (`search`) are skipped by cargo.
    crate::status(build)?;
    println!("fuzz: build {:.0} s", started.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    for t in &targets {
        let (stats, seeds, after, corpus) = run_target(&toolchain, t, args.seconds, &flags)?;
        rows.push((t.clone(), stats, seeds, after, corpus));
    }
    println!(
        "{:<10} {:>12} {:>10} {:>8}  corpus",
        "target", "runs", "execs/s", "inputs"
    );
    for (t, s, seeds, after, corpus) in &rows {
        let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        println!(
            "{t:<10} {:>12} {:>10} {:>8}  {} ({seeds} seeds)",
            show(s.runs),
            show(s.execs_per_sec),
            after,
            corpus.display()
        );
    }
    Ok(())
}
