//! The benchmark proper (release build with the `bench` feature): runs the scenarios,
//! prints the table, writes `target/bench/`. See the `bench` module header.
use std::{
    fs,
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::json;

use super::{drain, kernel, report, report::Row, rss, sys, veth, BenchArgs, Scenario, NS_PREFIX};

pub fn run(args: BenchArgs) -> Result<()> {
    if !args.no_build {
        let mut build = crate::cargo();
        build.args(["build", "--locked", "--release", "-p", "flowlog-agent"]);
        crate::status(build)?;
    }
    if !crate::is_root() {
        bail!("the benchmark needs root (namespaces, BPF): run `cargo xtask bench` (it uses sudo)");
    }
    sys::install_signal_handlers();
    Bench::new(args)?.run()
}

struct Bench {
    args: BenchArgs,
    out_dir: PathBuf,
    agent_bin: PathBuf,
    sender_cpu: Option<usize>,
    helper_cpus: Option<String>,
    rows: Vec<Row>,
    samples: serde_json::Value,
    failures: Vec<String>,
    started: Instant,
    load_at_start: String,
}

/// `/proc/loadavg` (1, 5, 15 min): other work on the machine shows in the noise.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn progress(msg: &str) {
    eprintln!("{msg}");
    let _ = std::io::stderr().flush();
}

impl Bench {
    fn new(args: BenchArgs) -> Result<Bench> {
        let out_dir = crate::target_dir().join("bench");
        fs::create_dir_all(out_dir.join("tmp"))?;
        let cpus = sys::online_cpus();
        let (sender_cpu, helper_cpus) = if cpus >= 2 {
            (Some(cpus - 1), Some(format!("0-{}", cpus - 2)))
        } else {
            (None, None)
        };
        Ok(Bench {
            args,
            agent_bin: crate::target_dir().join("release/flowlog"),
            out_dir,
            sender_cpu,
            helper_cpus,
            rows: Vec::new(),
            samples: json!({}),
            failures: Vec::new(),
            started: Instant::now(),
            load_at_start: loadavg(),
        })
    }

    fn wants(&self, s: Scenario) -> bool {
        self.args.only.is_empty() || self.args.only.contains(&s)
    }

    fn rounds(&self) -> usize {
        self.args
            .rounds
            .unwrap_or(if self.args.quick { 6 } else { 14 })
            .max(1)
    }

    /// Runs one scenario; a failure is recorded and the others still run (unless
    /// interrupted).
    fn scenario(
        &mut self,
        name: &str,
        f: impl FnOnce(&Bench) -> Result<(Vec<Row>, serde_json::Value)>,
    ) -> Result<()> {
        progress(&format!(
            "[{:>4.0}s] {name}",
            self.started.elapsed().as_secs_f64()
        ));
        match f(self) {
            Ok((rows, samples)) => {
                self.rows.extend(rows);
                self.samples[name] = samples;
                Ok(())
            }
            Err(e) => {
                sys::check_stop()?;
                progress(&format!("  {name} FAILED: {e:#}"));
                self.failures.push(format!("{name}: {e:#}"));
                Ok(())
            }
        }
    }

    fn run(mut self) -> Result<()> {
        let obj = flowlog_agent::ebpf_object();
        if obj.is_empty() {
            bail!("the agent was built without its eBPF object (AYA_BUILD_SKIP?)");
        }
        if !self.agent_bin.exists() {
            bail!(
                "{} missing: build with `cargo build --release -p flowlog-agent`",
                self.agent_bin.display()
            );
        }
        sys::remove_stale_namespaces(NS_PREFIX);
        let quick = self.args.quick;
        let rounds = self.rounds();

        if self.wants(Scenario::Kernel) {
            let plan = kernel::TestRunPlan {
                rounds: if quick { 5 } else { 9 },
                repeat: 1_000_000,
                new_flow_runs: if quick { 5_000 } else { 20_000 },
                new_flow_rounds: if quick { 1 } else { 3 },
                cpu: self.sender_cpu,
            };
            self.scenario("verifier", |_| {
                kernel::verifier(obj, if quick { 3 } else { 7 })
            })?;
            self.scenario("kernel", |_| kernel::test_run(obj, &plan))?;
            self.scenario("kernel_policy", |_| kernel::test_run_policy(obj, &plan))?;
        }

        let needs_net = [Scenario::Veth, Scenario::Insitu, Scenario::Rss]
            .iter()
            .any(|s| self.wants(*s));
        if needs_net {
            let topo = sys::Topology::create(NS_PREFIX, 4)?;
            let _sink = sys::in_netns(&topo.receiver.name, || {
                let s = std::net::UdpSocket::bind(("0.0.0.0", sys::SINK_PORT))
                    .context("binding the UDP sink")?;
                let small: libc::c_int = 4096;
                // SAFETY: valid socket and option pointer.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        &small as *const _ as *const libc::c_void,
                        size_of::<libc::c_int>() as u32,
                    )
                };
                Ok(s)
            })?;
            let (warmup, measure) = if quick {
                (Duration::from_millis(400), Duration::from_millis(800))
            } else {
                (Duration::from_millis(500), Duration::from_secs(1))
            };
            if self.wants(Scenario::Veth) {
                let softflowd = PathBuf::from("/usr/sbin/softflowd");
                anyhow::ensure!(
                    softflowd.exists(),
                    "{} is missing (the veth rows' baseline): run bash .ci/setup --tests",
                    softflowd.display()
                );
                let plan = veth::VethPlan {
                    rounds,
                    warmup,
                    measure,
                    sender_cpu: self.sender_cpu,
                    helper_cpus: self.helper_cpus.clone(),
                    agent_bin: self.agent_bin.clone(),
                    softflowd,
                    tmp: self.out_dir.join("tmp"),
                    flow_counts: vec![1, 100_000],
                    window_s: 10,
                    calibration_rounds: if quick { 2 } else { 3 },
                };
                self.scenario("veth", |_| veth::run(obj, &topo, &plan, &progress))?;
            }
            if self.wants(Scenario::Insitu) {
                let plan = kernel::InSituPlan {
                    rounds: if quick { 3 } else { 5 },
                    warmup,
                    measure: if quick {
                        Duration::from_millis(800)
                    } else {
                        Duration::from_millis(1500)
                    },
                    sender_cpu: self.sender_cpu,
                    // The full run sweeps the flow count: where the per-packet cost
                    // steps up (CPU cache, then the table leaving the L2 cache) says
                    // what limits the 100k row.
                    flow_counts: if quick {
                        vec![1, 100_000]
                    } else {
                        vec![1, 250, 4_000, 30_000, 100_000]
                    },
                };
                self.scenario("insitu", |_| kernel::in_situ(obj, &topo, &plan))?;
                self.scenario("memory", |_| {
                    kernel::memory_floor(&[4_000, 30_000, 100_000], 20_000_000)
                })?;
            }
            if self.wants(Scenario::Rss) {
                let plan = rss::RssPlan {
                    sender_cpu: self.sender_cpu,
                    helper_cpus: self.helper_cpus.clone(),
                    agent_bin: self.agent_bin.clone(),
                    flow_counts: if quick {
                        vec![100_000]
                    } else {
                        vec![100_000, 1_000_000]
                    },
                };
                self.scenario("rss", |_| rss::run(&topo, &plan, &progress))?;
            }
        }

        if self.wants(Scenario::Drain) {
            let dir = self.out_dir.join("tmp");
            self.scenario("drain", |_| {
                drain::run(obj, &[10_000, 100_000, 1_000_000], &dir, &progress)
            })?;
        }

        self.finish()
    }

    fn finish(mut self) -> Result<()> {
        // Headline rows first, in the order of the issue.
        let order = [
            "kernel_ns_per_packet",
            "veth_pps_ratio",
            "added_ns_vs_softflowd",
            "drain_1m_flows_seconds",
            "rss_100k_flows_mib",
        ];
        let rank = |r: &Row| {
            order
                .iter()
                .position(|o| r.name.starts_with(o))
                .unwrap_or(order.len())
        };
        self.rows.sort_by_key(rank);

        let table = report::table(&self.rows);
        let notes = report::notes(&self.rows);
        let machine = machine();
        let mut text = format!("{table}\n{notes}");
        text.push_str(&format!(
            "\nratio: value / baseline; `= value` where the value is itself a ratio of two same-run figures (baseline then shows the denominator).\nMachine: {machine}; load average {} at the start, {} at the end. veth rounds: {}; {:.0} s in all.\n",
            self.load_at_start,
            loadavg(),
            self.rounds(),
            self.started.elapsed().as_secs_f64()
        ));
        if !self.failures.is_empty() {
            text.push_str("\nNot measured:\n");
            for f in &self.failures {
                text.push_str(&format!("- {f}\n"));
            }
        }
        println!("\n{text}");
        report::write_summary(&self.out_dir.join("summary.json"), &self.rows)?;
        fs::write(self.out_dir.join("table.md"), &text)?;
        self.samples["machine"] = json!(machine);
        fs::write(
            self.out_dir.join("rounds.json"),
            serde_json::to_string_pretty(&self.samples)? + "\n",
        )?;
        println!("wrote {}", self.out_dir.join("summary.json").display());
        if !self.failures.is_empty() {
            bail!("{} scenario(s) failed", self.failures.len());
        }
        Ok(())
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{} CPUs ({cpu}), Linux {kernel}", sys::online_cpus())
}
