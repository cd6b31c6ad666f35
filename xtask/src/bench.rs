//! `cargo xtask bench`: what flowlog costs on the data path and in the agent, side by
//! side with the floor (an empty TC program) and with softflowd, all measured in one
//! run. Prints a table and writes `target/bench/summary.json` (an array of
//! `{"name","value","unit","baseline","ratio"}`), `target/bench/table.md` and the raw
//! samples in `target/bench/rounds.json`. Targets are reported, never asserted.
//!
//! `cargo xtask bench` (a light debug xtask) builds the agent and xtask with the `bench`
//! feature in release and replaces itself with that binary (through `sudo` if needed),
//! so the agent code timed here is optimised. `--quick` runs fewer rounds; `--only`
//! picks scenarios.
//!
//! Method, per scenario:
//!
//! - **kernel** (`kernel_ns_per_packet*`): `flowlog_tc_ingress` and `flowlog_tc_empty`
//!   under `BPF_PROG_TEST_RUN` on a thread pinned to one CPU, kernel BPF stats off
//!   (checked afterwards: the program's `run_cnt` must still be 0). Existing flow
//!   (IPv4 and IPv6 TCP, 154/174-byte frames): 1,000,000 runs per test run, several
//!   alternating rounds, median of each program; value = flowlog - empty. New flow: a
//!   test run repeats one packet, so each sample is its own test run (repeat=1) of a
//!   packet with a new source, against the empty program on the same packets the same
//!   way (1%-trimmed means); the same packets are run again as existing flows to
//!   separate the insert from the single-run overhead. Policy: the existing IPv4 flow
//!   with a 16-rule set bound to the test-run device (loopback) through the agent's
//!   `PolicyMaps`, the packet matching the last rule, stateless and stateful.
//! - **insitu** (`kernel_ns_in_situ_*`): the program attached (TCX ingress, by this
//!   process with aya) to a receiving veth under real traffic with 1 or 100k live
//!   flows (the full run also 250, 4k and 30k); `BPF_ENABLE_STATS` (what
//!   `kernel.bpf_stats_enabled=1` switches) on only for this phase; run_time_ns/run_cnt
//!   delta over the measured interval, flowlog minus the empty program attached the
//!   same way, interleaved rounds, medians. With it, **memory**
//!   (`memory_ns_per_dependent_read_*`): a user-space pointer chase over a random cycle
//!   of as many 88-byte records as the table slots of 4k, 30k and 100k streams, against
//!   250 records: what one read of a stream's slot costs at that many streams.
//! - **veth** (`veth_pps_ratio*`, `added_ns_vs_softflowd*`): namespaces `S` and `R`
//!   joined by four identical veth pairs (IPv6 off, so only bench traffic crosses),
//!   one per setup: nothing; the empty program on TCX ingress+egress; the real agent
//!   (`target/release/flowlog run --window 10s`, pinned away from the sender; measured
//!   intervals avoid its window boundaries); softflowd (`-T full -v 9`, export to
//!   loopback, pinned likewise). A sender thread in `S`, pinned to the last CPU, pushes
//!   pre-built 60-byte UDP frames through an `AF_PACKET` socket with `sendmmsg` (qdisc
//!   bypass), cycling over 1 or 100k distinct 5-tuples, to a UDP socket in `R` that is
//!   never read (full receive path, no ICMP back). Received = `Udp: InDatagrams +
//!   InErrors + NoPorts` of `R`; the sending CPU's time (sender thread + ksoftirqd)
//!   is read too. Each round measures the four setups one after the other (warm-up,
//!   then a fixed interval), the order rotating by one each round; halfway the setups
//!   swap pairs. Per setup, ns per packet = 1e9 / median pps (ratio = median pps /
//!   median pps without a program) or, by CPU accounting, the median CPU ns per
//!   received packet; the method whose no-program samples spread less in the run is
//!   reported (other work on the machine steals the sender's CPU and moves pps, not CPU
//!   ns per packet) and the other given beside it. Added cost = ns(setup) - ns(none).
//! - **drain** (`drain_*`): the agent library's own window path on maps loaded with
//!   max_entries = `--max-flows`, filled from user space: `FlowMaps::take`, `switch`,
//!   batches of `next_batch` and `WindowWriter::flows` with a write every MiB, then
//!   `finish`, as the agent's `emit_window` does, writing to a file.
//! - **rss** (`rss_*`, `kernel_map_memory_*`): the real agent under traffic with N
//!   distinct 5-tuples, read after it emitted a window holding all N streams: `VmHWM`
//!   and the memlock of its BPF maps (`/proc/PID/fdinfo`); baseline: the idle agent at
//!   defaults.
//!
//! Everything created (namespaces, veth pairs, agent, softflowd, links) is removed by
//! guards on drop, including on panic and Ctrl-C (which stops the run at the next
//! check); namespaces of killed runs are removed by the next run.
#[cfg(feature = "bench")]
mod drain;
#[cfg(feature = "bench")]
mod kernel;
#[cfg(feature = "bench")]
mod packet;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod rss;
#[cfg(feature = "bench")]
mod runner;
#[cfg(feature = "bench")]
mod sender;
#[cfg(feature = "bench")]
mod sys;
#[cfg(feature = "bench")]
mod veth;

use std::{env, os::unix::process::CommandExt as _};

use anyhow::{Context as _, Result};
use clap::ValueEnum;

#[cfg(feature = "bench")]
const NS_PREFIX: &str = "flbench-";

#[derive(clap::Args, Debug)]
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
pub struct BenchArgs {
    /// Fewer rounds and shorter intervals (about 2 minutes after the build instead of 5);
    /// skips the 1M-flow RSS run.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds of the veth measurements per flow count (default 14; 6 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Run only these scenarios (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Do not run `cargo build --release` first (use the binaries already built).
    #[arg(long)]
    no_build: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[cfg_attr(not(feature = "bench"), allow(dead_code))]
enum Scenario {
    Kernel,
    Insitu,
    Veth,
    Drain,
    Rss,
}

pub fn run(args: BenchArgs) -> Result<()> {
    #[cfg(feature = "bench")]
    if !cfg!(debug_assertions) {
        return runner::run(args);
    }
    reexec_release(&args)
}

/// Builds the agent and xtask (with the `bench` feature, which brings in the agent
/// library) in release and replaces this process with that xtask, so that the timed
/// agent code is optimised and plain `cargo xtask run/test` stay light.
fn reexec_release(args: &BenchArgs) -> Result<()> {
    if !cfg!(debug_assertions) && args.no_build {
        // We are the release binary already, built without the feature: exec'ing it
        // again would loop.
        anyhow::bail!("this xtask was built without the `bench` feature: run `cargo xtask bench`");
    }
    if !args.no_build {
        let mut build = crate::cargo();
        build.args([
            "build",
            "--locked",
            "--release",
            "-p",
            "flowlog-agent",
            "-p",
            "xtask",
            "--features",
            "xtask/bench",
        ]);
        crate::status(build)?;
    }
    let bin = crate::target_dir().join("release/xtask");
    let mut cmd = crate::privileged(&bin);
    cmd.arg("bench").args(env::args().skip(2));
    if !args.no_build {
        cmd.arg("--no-build");
    }
    let err = cmd.exec();
    Err(err).with_context(|| format!("executing {}", bin.display()))
}
