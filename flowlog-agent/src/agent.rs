//! `flowlog run`: the agent loop.
//!
//! ```text
//!  load + verify programs ─▶ [paths] ─▶ flow logs (CLI, config, saved) ─▶ link table
//!        ┌──────────────────────────────────────────────────────────────────────┐
//!        ▼                                                                      │
//!  wait: next capture tick │ link event │ control request │ SIGHUP │ SIGINT/TERM │
//!        ▼                                                                      │
//!  tick: FlowMaps::switch (generation flip + RCU grace period), drain once,     │
//!        each stream to the instances covering its interface                    │
//!        (instance::schedule): records of the instances whose window ends ──▶ sinks
//!  link event: dump links, reconcile members and attachments (instance::scope)  │
//!  request: create/start/stop/delete/list/describe (instance::control) ─────────┘
//! ```
//! The kernel captures at one tick, the gcd of the active instances' windows; each
//! instance gets records at its own window. Stopping an instance (or the agent)
//! drains at once and emits its partial window with `end` = now. A switch that happens
//! late (a stalled agent) emits records whose `end` is the switch time: they say
//! honestly that they cover more than one window. An instance whose window spans
//! several ticks accumulates them here and in the tick journal (`instance::journal`,
//! with a state directory), appended before the kernel's generation is cleared.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use aya::Ebpf;
use flowlog_common::{counter, IfaceConf, SkipStats};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, Mutex},
};
use tracing::{debug, error, info, warn};

use crate::{
    config::{Config, Output, SinkConfig, SinkKind},
    drain::{DrainError, FlowMaps},
    instance::{
        control::{self, ControlError, Pending, Request, Response, Status},
        journal::{Accumulating, Journal, JournalError, Restored, TickWriter},
        registry::{Origin, Registry, RegistryError, StateError},
        schedule::{InstanceWindow, Member, Render},
        scope::{self, LinkWatcher, Links, ScopeError},
        Checks, FlowLogFile, FlowLogSpec, InstanceError, IpVersion, Resource, VSwitch,
    },
    loader::{self, IfaceLinks, LoadError},
    metrics::{Metrics, MetricsError, SinkLabels},
    paths::{PathsError, SelectMaps},
    pin::{self, PinError, Pins},
    policy::{ApplyError, Policy, PolicyMaps},
    privilege::{self, PrivilegeError},
    record::InterfaceMeta,
    sink::{self, Sink, SinkError, SinkFuture},
    window,
};

pub use crate::instance::schedule::ExtraFields;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error("{source}\n{hint}")]
    Permission {
        #[source]
        source: Box<LoadError>,
        hint: String,
    },
    #[error(transparent)]
    Load(Box<LoadError>),
    #[error(transparent)]
    Drain(#[from] DrainError),
    #[error("installing the policy: {0}")]
    Policy(#[from] ApplyError),
    #[error("installing [paths]: {0}")]
    Paths(#[from] PathsError),
    #[error("writing records: {0}")]
    Sink(#[from] SinkError),
    #[error("installing signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    #[error("reading the clock: {0}")]
    Clock(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("flow log {name:?}: {source}")]
    FlowLog {
        name: String,
        #[source]
        source: InstanceError,
    },
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(#[from] crate::kubernetes::KubeError),
}

impl From<LoadError> for AgentError {
    fn from(e: LoadError) -> Self {
        if e.is_permission() {
            AgentError::Permission {
                source: Box::new(e),
                hint: privilege::explain_eperm(),
            }
        } else {
            AgentError::Load(Box::new(e))
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> Result<u64, AgentError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(AgentError::Clock(std::io::Error::last_os_error()));
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn unix_now_ns() -> Result<u64, AgentError> {
    clock_ns(libc::CLOCK_REALTIME)
}

/// `unix_ns - monotonic_ns`: turns the kernel's `bpf_ktime_get_coarse_ns` stamps
/// (coarse `CLOCK_MONOTONIC`) into wall-clock time.
fn mono_to_unix_offset() -> Result<i128, AgentError> {
    let mono = clock_ns(libc::CLOCK_MONOTONIC)?;
    let unix = clock_ns(libc::CLOCK_REALTIME)?;
    Ok(unix as i128 - mono as i128)
}

/// Name of the implicit instance of `flowlog run --interface`.
pub const CLI_INSTANCE: &str = "cli";

/// A named sink shared by every instance that names it (one file directory, one
/// connection), used by one instance at a time.
struct SharedSink {
    name: String,
    inner: Arc<Mutex<Box<dyn Sink>>>,
}

impl Sink for SharedSink {
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move { self.inner.lock().await.write_batch(lines).await })
    }
    fn flush(&mut self) -> SinkFuture<'_> {
        Box::pin(async move { self.inner.lock().await.flush().await })
    }
    fn close(&mut self) -> SinkFuture<'_> {
        // Other instances may still use it: the agent closes shared sinks at exit.
        self.flush()
    }
    fn describe(&self) -> &str {
        &self.name
    }
}

/// An active instance.
struct Running {
    spec: FlowLogSpec,
    window: InstanceWindow,
    out: sink::FanOut,
    labels: Vec<SinkLabels>,
    buf: Vec<u8>,
    /// Agent id (and flow log name) in record ids.
    id_scope: String,
    /// Bytes rendered into `buf` since the last window (for metrics).
    bytes: u64,
    /// `window.records` already counted in the metrics.
    reported: u64,
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    privilege::check()?;
    if cfg.cleanup {
        match &cfg.pin_dir {
            Some(root) => {
                let (links, maps) = pin::cleanup(root)?;
                eprintln!(
                    "flowlog: removed {links} pinned links and {maps} pinned maps under {}",
                    root.display()
                );
            }
            None => eprintln!(
                "flowlog: nothing pinned: no --pin-dir (and /sys/fs/bpf/flowlog is not in use)"
            ),
        }
        return Ok(());
    }
    let metrics = Arc::new(Metrics::new());
    metrics.flow_map_capacity.set(i64::from(cfg.max_flows));
    if let Some(addr) = cfg.metrics_address {
        crate::metrics::serve(addr, Arc::clone(&metrics)).await?;
    }
    let (pins, adopted) = match &cfg.pin_dir {
        Some(root) => {
            let shape = pin::shape(cfg.max_flows, cfg.policy.is_some());
            let (pins, adopted) = Pins::prepare(root, shape)?;
            (Some(pins), adopted)
        }
        None => (None, None),
    };
    let mut ebpf = loader::load(&cfg, pins.as_ref())?;
    spawn_kernel_logs(&mut ebpf);
    let policy_maps = PolicyMaps::take(&mut ebpf)?;
    let mut select = SelectMaps::take(&mut ebpf)?;
    if adopted.is_some() {
        select.clear_ifaces();
    }
    if let Some(paths) = &cfg.paths {
        select.install(paths)?;
        info!(
            rules = paths.rules().len(),
            "traffic_path classification installed"
        );
    }
    let maps = FlowMaps::take_with(
        &mut ebpf,
        adopted,
        pin::shape(cfg.max_flows, cfg.policy.is_some()),
    )?;
    let catch_up = adopted.is_some() && maps.idle_unemitted();
    let (journal, restored) = match &cfg.state_dir {
        Some(dir) => {
            let (j, r) = Journal::open(dir)?;
            if r.cut_bytes > 0 {
                warn!(journal = %j.path().display(), bytes = r.cut_bytes, "tick journal: an incomplete block (a crash while appending) was cut off; that tick is still in the kernel's maps if they were adopted");
            }
            (Some(j), Some(r))
        }
        None => (None, None),
    };
    let mut watcher = LinkWatcher::start()?;
    let links = watcher.dump().await?;
    let (control_server, control_rx) = match &cfg.socket {
        Some(path) => {
            let (server, rx) = control::serve(path, cfg.socket_group.as_deref()).await?;
            info!(socket = %path.display(), "control socket");
            (Some(server), Some(rx))
        }
        None => (None, None),
    };
    let mut agent = Agent {
        cfg: &cfg,
        ebpf,
        maps,
        select,
        policy_maps,
        policy: cfg.policy.as_ref().map(|(_, p)| p.clone()),
        links,
        attached: BTreeMap::new(),
        registry: Registry::new(cfg.max_flow_logs, cfg.state_dir.clone()),
        running: BTreeMap::new(),
        shared: HashMap::new(),
        metrics: Arc::clone(&metrics),
        tick: cfg.window,
        last_counters: [0; counter::NAMES.len()],
        pins,
        catch_up,
        journal,
        restored,
        journal_warned: false,
        handover: false,
        adopting: adopted.is_some(),
        #[cfg(feature = "kubernetes")]
        pods: match &cfg.kubernetes {
            Some(settings) => Some(crate::kubernetes::PodWatcher::start(settings.clone()).await?),
            None => None,
        },
    };
    agent.declare()?;
    if let Some(a) = adopted {
        agent.adopt_links();
        info!(
            links = agent.attached.len(),
            last_switch_s = a.last_switch_s,
            catch_up,
            "adopted the pinned maps and links of a previous agent: nothing it counted is lost"
        );
        if catch_up {
            warn!("the previous agent stopped while emitting a window: its streams are emitted now (records of that window may repeat; record-id tells)");
        }
    }
    if let (Some((path, _)), Some(policy)) = (&cfg.policy, agent.policy.clone()) {
        agent.apply_policy(&policy)?;
        info!(policy = %path.display(), rule_sets = policy.sets.len(), "policy installed");
    }
    let now = unix_now_ns()?;
    // Windows continue from the previous agent's last switch: the records of the first
    // one cover what it counted while no agent ran.
    // With a catch-up (the idle generation's records never went out), that window's
    // start: the records then cover both windows, and say so.
    let first_start = adopted
        .map(|a| {
            let s = if catch_up && a.prev_switch_s > 0 {
                a.prev_switch_s
            } else {
                a.last_switch_s
            };
            u64::from(s) * 1_000_000_000
        })
        .filter(|&t| t > 0 && t < now)
        .unwrap_or(now);
    let names: Vec<String> = agent
        .registry
        .entries()
        .iter()
        .filter(|e| e.active)
        .map(|e| e.spec.name.clone())
        .collect();
    for name in names {
        // A window a previous agent was accumulating continues from its start.
        let restored_start = agent.registry.get(&name).and_then(|e| {
            agent
                .restored
                .as_ref()?
                .window_of(&name, e.spec.window.as_nanos() as u64)
        });
        agent
            .start_running(&name, restored_start.unwrap_or(first_start))
            .await?;
    }
    agent.reconcile(now);
    agent.replay_journal()?;
    agent.adopting = false;
    let result = agent.main_loop(watcher, control_rx).await;
    agent.shutdown().await;
    drop(control_server);
    result
}

struct Agent<'c> {
    cfg: &'c Config,
    ebpf: Ebpf,
    maps: FlowMaps,
    select: SelectMaps,
    policy_maps: PolicyMaps,
    /// The policy in force (the file's, or the last good reload).
    policy: Option<Policy>,
    links: Links,
    attached: BTreeMap<u32, IfaceLinks>,
    registry: Registry,
    running: BTreeMap<String, Running>,
    shared: HashMap<String, Arc<Mutex<Box<dyn Sink>>>>,
    metrics: Arc<Metrics>,
    /// The kernel's capture tick: the gcd of the running instances' windows.
    tick: Duration,
    /// Data-path counters at the last drain.
    last_counters: [u64; counter::NAMES.len()],
    /// Where maps and links are pinned (`--pin-dir`).
    pins: Option<Pins>,
    /// The idle generation holds a previous agent's unemitted streams: the next drain
    /// takes them too.
    catch_up: bool,
    /// The tick journal (with a state directory).
    journal: Option<Journal>,
    /// What the previous agent journaled, until the first drain (see `drain`).
    restored: Option<Restored>,
    /// Warned that multi-tick windows are not journaled (no state directory).
    journal_warned: bool,
    /// SIGUSR2: leave everything attached and pinned for the next agent.
    handover: bool,
    /// The first reconcile after adopting a previous agent's links.
    adopting: bool,
    #[cfg(feature = "kubernetes")]
    pods: Option<crate::kubernetes::PodWatcher>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Agent<'_> {
    fn checks_lenient(&self) -> (Vec<String>, bool) {
        (
            self.cfg.sink_defs.iter().map(|d| d.name.clone()).collect(),
            self.cfg.paths.is_some(),
        )
    }

    /// The implicit instance, `[[flow_log]]`, and the saved instances.
    fn declare(&mut self) -> Result<(), AgentError> {
        let cfg = self.cfg;
        let flow_log_err = |name: &str, source| AgentError::FlowLog {
            name: name.to_owned(),
            source,
        };
        if !cfg.interfaces.is_empty() {
            let spec = FlowLogSpec {
                name: CLI_INSTANCE.to_owned(),
                description: "flowlog run --interface".to_owned(),
                resource: Resource::Eni(cfg.interfaces.iter().map(|i| i.name.clone()).collect()),
                window: cfg.window,
                transfer_type: cfg.transfer_type,
                ip_version: IpVersion::DualStack,
                paths: None,
                output: None,
                sinks: Vec::new(),
            };
            self.registry
                .declare(spec, true, Origin::Cli)
                .map_err(|e| flow_log_err(CLI_INSTANCE, e))?;
        }
        let (sinks, paths_configured) = self.checks_lenient();
        let checks = Checks {
            interface_exists: None,
            bridge_exists: &|_| true,
            paths_configured,
            sinks: &sinks,
        };
        for f in &cfg.flow_logs {
            let (spec, active) =
                FlowLogSpec::validate(f, &checks).map_err(|e| flow_log_err(&f.name, e))?;
            self.registry
                .declare(spec, active, Origin::Config)
                .map_err(|e| flow_log_err(&f.name, e))?;
        }
        let state = self.registry.load_state()?;
        for f in &state.flow_logs {
            match FlowLogSpec::validate(f, &checks) {
                Ok((spec, active)) => {
                    if let Err(e) = self.registry.restore(spec, active) {
                        error!(flow_log = %f.name, error = %e, "saved flow log not restored");
                    }
                }
                Err(e) => error!(flow_log = %f.name, error = %e, "saved flow log not restored"),
            }
        }
        self.registry.apply_stops(&state.stopped);
        Ok(())
    }

    async fn main_loop(
        &mut self,
        mut watcher: LinkWatcher,
        mut control_rx: Option<mpsc::Receiver<Pending>>,
    ) -> Result<(), AgentError> {
        let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signal)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signal)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;
        let mut sigusr2 = signal(SignalKind::user_defined2()).map_err(AgentError::Signal)?;
        self.metrics.set_ready(self.tick);
        info!(
            tick = %window::format_window(self.tick),
            flow_logs = self.running.len(),
            interfaces = self.attached.len(),
            max_flows = self.cfg.max_flows,
            "collecting"
        );
        self.last_counters = self.maps.counters()?;
        loop {
            let now = unix_now_ns()?;
            let tick_end = window::next_boundary(now, self.tick);
            let wait = Duration::from_nanos(tick_end.saturating_sub(now));
            let deadline = tokio::time::Instant::from_std(Instant::now() + wait);
            enum Wake {
                Tick,
                Stop,
                Hup,
                Links,
                Request(Box<Pending>),
            }
            let wake = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => Wake::Tick,
                _ = sigint.recv() => Wake::Stop,
                _ = sigterm.recv() => Wake::Stop,
                _ = sigusr2.recv() => { self.handover = self.pins.is_some(); if !self.handover { warn!("SIGUSR2 without --pin-dir: nothing can be handed over; stopping") } Wake::Stop },
                _ = sighup.recv() => Wake::Hup,
                _ = watcher.changed() => Wake::Links,
                Some(p) = async { match control_rx.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => Wake::Request(Box::new(p)),
            };
            match wake {
                Wake::Tick => {
                    // The switch happens now: normally within milliseconds of the
                    // boundary, but later if the agent was stalled (SIGSTOP, an
                    // overloaded node). The records then cover up to now, and say so.
                    let switched = unix_now_ns()?;
                    if switched >= tick_end + self.tick.as_nanos() as u64 {
                        warn!(
                            late_s = (switched - tick_end) / 1_000_000_000,
                            "window switch late (agent stalled): these records cover more than one window"
                        );
                    }
                    self.drain(tick_end, switched, Due::Boundary).await?;
                    self.metrics.window_done();
                }
                Wake::Stop => {
                    let now = unix_now_ns()?;
                    self.drain(now, now, Due::All).await?;
                    if self.handover {
                        info!("handing over: partial windows emitted; programs stay attached and pinned for the next agent");
                    } else {
                        info!("stopping: partial windows emitted, detaching");
                    }
                    return Ok(());
                }
                Wake::Hup => self.reload_policy(),
                Wake::Links => match watcher.dump().await {
                    Ok(links) => {
                        self.links = links;
                        let now = unix_now_ns()?;
                        self.reconcile(now);
                    }
                    Err(e) => error!(error = %e, "link table not refreshed"),
                },
                Wake::Request(p) => {
                    let (req, reply) = *p;
                    // A request sees the links as they are now (an interface or
                    // bridge created just before it).
                    if watcher.pending() {
                        match watcher.dump().await {
                            Ok(links) => {
                                self.links = links;
                                let now = unix_now_ns()?;
                                self.reconcile(now);
                            }
                            Err(e) => error!(error = %e, "link table not refreshed"),
                        }
                    }
                    let response = self.handle(req).await?;
                    let _ = reply.send(response);
                }
            }
        }
    }

    /// Opens an instance's sinks and starts its window at `now`.
    async fn start_running(&mut self, name: &str, now: u64) -> Result<(), AgentError> {
        let Some(entry) = self.registry.get(name) else {
            return Ok(());
        };
        let spec = entry.spec.clone();
        let origin = entry.origin;
        let (out, names) = self.open_sinks(&spec, origin).await?;
        let id_scope = if origin == Origin::Cli {
            self.cfg.agent_id.clone()
        } else {
            format!("{}/{}", self.cfg.agent_id, spec.name)
        };
        info!(flow_log = %spec.name, window = %window::format_window(spec.window), resource = %spec.resource.type_name(), "flow log started");
        self.running.insert(
            spec.name.clone(),
            Running {
                spec,
                window: InstanceWindow::new(now),
                out,
                labels: names.into_iter().map(|sink| SinkLabels { sink }).collect(),
                buf: Vec::with_capacity(1 << 16),
                id_scope,
                bytes: 0,
                reported: 0,
            },
        );
        self.retick();
        Ok(())
    }

    fn retick(&mut self) {
        let secs = self
            .running
            .values()
            .map(|r| r.spec.window.as_secs().max(1))
            .fold(0, gcd);
        self.tick = Duration::from_secs(if secs == 0 { 60 } else { secs });
        self.metrics.active_flow_logs.set(self.running.len() as i64);
        if self.journal.is_none() && !self.journal_warned {
            if let Some(r) = self.running.values().find(|r| r.spec.window > self.tick) {
                self.journal_warned = true;
                warn!(flow_log = %r.spec.name, window = %window::format_window(r.spec.window), tick = %window::format_window(self.tick), "this window spans several capture ticks, accumulated in memory only: without a state directory (--state-dir) a crash of the agent loses them");
            }
        }
    }

    /// Feeds the ticks a previous agent journaled to the windows they belong to (after
    /// `start_running` gave each its restored start and `reconcile` its members).
    fn replay_journal(&mut self) -> Result<(), AgentError> {
        let Some(restored) = &self.restored else {
            return Ok(());
        };
        let offset = i64::try_from(mono_to_unix_offset()?).unwrap_or(i64::MAX);
        let mut carried = Vec::new();
        for (name, r) in self.running.iter_mut() {
            let start = r.window.start_ns;
            let (mut ticks, mut streams) = (0usize, 0usize);
            for t in restored.ticks_of(name, start) {
                ticks += 1;
                for (key, stats) in &t.streams {
                    // Its interface was counted from the window's start.
                    if let Some(m) = r.window.members.get_mut(&key.ifindex) {
                        m.joined_ns = m.joined_ns.min(start);
                    }
                    r.window
                        .stream(&r.spec, key, &t.times_now(stats, offset), None);
                    streams += 1;
                }
                for (ifindex, s) in &t.skips {
                    r.window.skipped(*ifindex, s);
                }
            }
            if ticks > 0 {
                info!(flow_log = %name, ticks, streams, window_start_s = start / 1_000_000_000, "restored the ticks of an unfinished window from the tick journal");
                carried.push(name.clone());
            }
        }
        for (name, window_ns) in restored.unfinished() {
            let running = self.running.get(name);
            if !carried.iter().any(|c| c == name) {
                warn!(flow_log = %name, journaled_window_s = window_ns / 1_000_000_000, running = running.is_some(), "tick journal: ticks of a flow log that is not running with that window were not carried over");
            }
        }
        Ok(())
    }

    /// The destinations of an instance: its output (stdout or an appended file)
    /// unless named sinks replace it, and its named sinks (shared between instances).
    async fn open_sinks(
        &mut self,
        spec: &FlowLogSpec,
        origin: Origin,
    ) -> Result<(sink::FanOut, Vec<String>), AgentError> {
        let cfg = self.cfg;
        let (output, named, explicit): (Output, Vec<SinkConfig>, bool) = if origin == Origin::Cli {
            (cfg.output.clone(), cfg.sinks.clone(), cfg.output_explicit)
        } else {
            let named = spec
                .sinks
                .iter()
                .filter_map(|n| cfg.sink_defs.iter().find(|d| &d.name == n).cloned())
                .collect();
            (
                spec.output.clone().unwrap_or_default(),
                named,
                spec.output.is_some(),
            )
        };
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        let mut names = Vec::new();
        if named.is_empty() || explicit {
            sinks.push(sink::open(&output).await?);
            names.push(match output {
                Output::Stdout => "stdout".to_string(),
                Output::File(_) => "file".to_string(),
            });
        }
        for s in &named {
            let inner = match self.shared.get(&s.name) {
                Some(i) => Arc::clone(i),
                None => {
                    let opened = open_named(s, cfg, &self.metrics).await?;
                    info!(sink = %s.name, "sink opened");
                    let i = Arc::new(Mutex::new(opened));
                    self.shared.insert(s.name.clone(), Arc::clone(&i));
                    i
                }
            };
            sinks.push(Box::new(SharedSink {
                name: s.name.clone(),
                inner,
            }));
            names.push(s.name.clone());
        }
        Ok((sink::FanOut::new(sinks), names))
    }

    /// Record metadata of an interface in an instance.
    fn meta(&self, spec: &FlowLogSpec, ifindex: u32, name: &str) -> InterfaceMeta {
        let mut meta = self.cfg.meta_for(name);
        let listed = self.cfg.interfaces.iter().any(|i| i.name == name);
        match &spec.resource {
            Resource::VSwitch(ids) if !listed => {
                let master = self.links.get(&ifindex).and_then(|l| l.master);
                let bridge = ids.iter().find_map(|id| match id {
                    VSwitch::Bridge(b)
                        if master
                            .and_then(|m| self.links.get(&m))
                            .is_some_and(|m| m.name == *b) =>
                    {
                        Some(b.clone())
                    }
                    _ => None,
                });
                if let Some(b) = bridge {
                    meta.vswitch_id = Some(b);
                }
            }
            Resource::Vpc(Some(id)) if !listed => meta.vpc_id = Some(id.clone()),
            _ => {}
        }
        meta
    }

    /// Brings members and attachments in line with the link table and the running
    /// instances: new interfaces join (and are attached before their first packet is
    /// expected), gone ones leave, and interfaces nothing needs are detached.
    fn reconcile(&mut self, now: u64) {
        let mut desired: BTreeMap<u32, IfaceConf> = BTreeMap::new();
        let names: Vec<String> = self.running.keys().cloned().collect();
        for name in names {
            let spec = self.running[&name].spec.clone();
            let now_members = scope::members(&spec.resource, &self.links);
            let mut joins = Vec::new();
            for &ifindex in &now_members {
                let link_name = self.links[&ifindex].name.clone();
                let present = self.running[&name]
                    .window
                    .members
                    .get(&ifindex)
                    .is_some_and(|m| m.name == link_name);
                if !present {
                    joins.push((
                        ifindex,
                        link_name.clone(),
                        self.meta(&spec, ifindex, &link_name),
                    ));
                }
            }
            let r = self.running.get_mut(&name).expect("running");
            for (ifindex, link_name, meta) in joins {
                info!(flow_log = %name, interface = %link_name, ifindex, "interface joins");
                // An interface adopted from a previous agent was counted all along:
                // it is a member from the window's start.
                let joined = if self.adopting && self.attached.contains_key(&ifindex) {
                    r.window.start_ns
                } else {
                    now
                };
                r.window
                    .members
                    .insert(ifindex, Member::new(link_name, meta, joined));
            }
            for (ifindex, m) in r.window.members.iter_mut() {
                let here = now_members.contains(ifindex);
                if here && m.gone_ns.is_some() {
                    m.gone_ns = None;
                } else if !here && m.gone_ns.is_none() {
                    info!(flow_log = %name, interface = %m.name, ifindex, "interface leaves: partial window at the next boundary");
                    m.gone_ns = Some(now);
                }
            }
            let (bits, paths) = spec.selection();
            for &ifindex in &now_members {
                let c = desired.entry(ifindex).or_insert(IfaceConf {
                    paths: 0,
                    select: 0,
                    role: 0,
                    _pad: [0; 2],
                });
                c.select |= bits;
                c.paths |= paths;
            }
        }
        for (ifindex, conf) in desired.iter_mut() {
            conf.role = self
                .cfg
                .paths
                .as_ref()
                .map_or(0, |p| p.role_of(&self.links[ifindex].name));
        }
        let mut changed = false;
        let gone: Vec<u32> = self
            .attached
            .keys()
            .filter(|i| !desired.contains_key(i))
            .copied()
            .collect();
        for ifindex in gone {
            if let Some(links) = self.attached.remove(&ifindex) {
                info!(interface = %links.name, ifindex, "detaching");
                loader::detach_one(links);
            }
            self.select.remove_iface(ifindex);
            changed = true;
        }
        for (ifindex, conf) in &desired {
            if let Err(e) = self.select.set_iface(*ifindex, *conf) {
                error!(ifindex, error = %e, "interface selection not written");
            }
            if self.attached.contains_key(ifindex) {
                continue;
            }
            let name = self.links[ifindex].name.clone();
            match loader::attach_one(
                &mut self.ebpf,
                self.cfg.mode,
                self.cfg.xdp_attach,
                &name,
                *ifindex,
                self.pins.as_ref(),
            ) {
                Ok(links) => {
                    info!(interface = %name, ifindex, hooks = %links.hooks, "attached");
                    self.attached.insert(*ifindex, links);
                    changed = true;
                }
                // It may have gone again already; the next link event says so.
                Err(e) => error!(interface = %name, error = %e, "attach failed"),
            }
        }
        self.metrics
            .attached_interfaces
            .set(self.attached.len() as i64);
        if changed {
            if let Some(policy) = self.policy.clone() {
                if let Err(e) = self.apply_policy(&policy) {
                    error!(error = %e, "policy not re-bound to the new interfaces");
                }
            }
        }
    }

    fn apply_policy(&mut self, policy: &Policy) -> Result<(), ApplyError> {
        let links = &self.links;
        self.policy_maps.apply(policy, |name| {
            links.values().find(|l| l.name == name).map(|l| l.ifindex)
        })
    }

    /// SIGHUP: re-reads the policy file and installs it atomically; on any error the
    /// policy in force stays.
    fn reload_policy(&mut self) {
        let Some((path, _)) = &self.cfg.policy else {
            info!("SIGHUP: no policy file configured, nothing to reload");
            return;
        };
        let policy = match Policy::load(path) {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "policy reload failed; the previous policy stays in force");
                return;
            }
        };
        if self.cfg.flow_logs.is_empty() && !self.cfg.interfaces.is_empty() {
            if let Err(e) = crate::config::check_policy_interfaces(&policy, &self.cfg.interfaces) {
                error!(error = %e, "policy reload failed; the previous policy stays in force");
                return;
            }
        }
        match self.apply_policy(&policy) {
            Ok(()) => {
                info!(policy = %path.display(), rule_sets = policy.sets.len(), "policy reloaded");
                self.policy = Some(policy);
            }
            Err(e) => {
                error!(error = %e, "installing the reloaded policy failed; the previous policy stays in force")
            }
        }
    }

    /// Drains the flow map once and hands every stream to the instances covering its
    /// interface; renders and delivers the windows that end (`due`).
    async fn drain(
        &mut self,
        tick_end: u64,
        switched: u64,
        due: Due<'_>,
    ) -> Result<(), AgentError> {
        let drain_start = Instant::now();
        let offset = mono_to_unix_offset()?;
        #[cfg(feature = "kubernetes")]
        let pods = self.pods.as_ref().map(|w| (w.snapshot(), &w.settings));
        #[cfg(feature = "kubernetes")]
        let pod_fields = pods.as_ref().map(|(index, settings)| {
            move |out: &mut Vec<u8>, key: &flowlog_common::FlowKey| {
                let (src, dst) = key.addrs();
                crate::kubernetes::append_fields(out, index, settings, Some(src), Some(dst));
            }
        });
        #[cfg(feature = "kubernetes")]
        let extra = pod_fields.as_ref().map(|f| f as &ExtraFields<'_>);
        #[cfg(not(feature = "kubernetes"))]
        let extra: Option<&ExtraFields<'_>> = None;
        let format = self.cfg.record_format;
        // The running instances by position; which of them end their window now, at
        // which time, and whether they render streams directly (nothing accumulated).
        let mut runs: Vec<(&String, &mut Running)> = self.running.iter_mut().collect();
        let ends: Vec<Option<(u64, bool)>> = runs
            .iter()
            .map(|(name, r)| {
                let end = match due {
                    Due::All => Some(switched),
                    Due::One(n) => (n == name.as_str()).then_some(switched),
                    Due::Boundary => {
                        let b = window::next_boundary(r.window.start_ns, r.spec.window);
                        (b <= tick_end).then_some(switched.max(tick_end))
                    }
                };
                end.map(|e| (e, !r.window.has_pending()))
            })
            .collect();
        let mut by_ifindex: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, (_, r)) in runs.iter().enumerate() {
            for ifindex in r.window.members.keys() {
                by_ifindex.entry(*ifindex).or_default().push(i);
            }
        }
        let mut streams = 0usize;
        let mut skipped_total = SkipStats::default();
        let feed = Feed {
            ends: &ends,
            by_ifindex: &by_ifindex,
            format,
            offset,
            extra,
        };
        // What a previous agent journaled matters to the first drain only.
        let restored = self.restored.take();
        let none = vec![false; runs.len()];
        if std::mem::take(&mut self.catch_up) {
            // The previous agent's last drained tick, never cleared: a window that
            // journaled it already has it.
            let counter = self.maps.window_counter().wrapping_sub(1);
            let skip: Vec<bool> = runs
                .iter()
                .map(|(name, r)| {
                    restored
                        .as_ref()
                        .is_some_and(|x| x.has_tick(name, r.window.start_ns, counter))
                })
                .collect();
            let mut journaling =
                begin_tick(self.journal.as_mut(), counter, offset, &runs, &ends, &skip);
            let idle = self.maps.drain_idle()?;
            streams += feed
                .generation(
                    idle,
                    &mut runs,
                    &skip,
                    journaling.as_mut(),
                    &mut skipped_total,
                )
                .await?;
            if seal(journaling) == Some(false) {
                self.metrics.journal_errors.inc();
            }
        }
        let counter = self.maps.window_counter();
        let mut journaling =
            begin_tick(self.journal.as_mut(), counter, offset, &runs, &ends, &none);
        let drain = self.maps.switch()?;
        streams += feed
            .generation(
                drain,
                &mut runs,
                &none,
                journaling.as_mut(),
                &mut skipped_total,
            )
            .await?;
        // On disk before the generation is cleared (below, once the records are out).
        let journaled = seal(journaling);
        if journaled == Some(false) {
            self.metrics.journal_errors.inc();
        }
        if journaled == Some(true) && failpoint("tick-journaled") {
            error!("FLOWLOG_FAILPOINT=tick-journaled: aborting between the journal and the clear");
            std::process::abort();
        }
        let mut finished = Vec::new();
        for (i, (name, r)) in runs.iter_mut().enumerate() {
            let Some((end, _)) = ends[i] else {
                continue;
            };
            finished.push((name.to_string(), r.window.start_ns));
            let render = Render {
                format,
                id_scope: &r.id_scope,
                mono_to_unix: offset,
                extra,
            };
            let before = r.buf.len();
            r.window.finish(&mut r.buf, &render, end);
            r.bytes += (r.buf.len() - before) as u64;
            r.out.write_batch(&r.buf).await?;
            r.buf.clear();
            r.out.flush().await?;
            let records = r.window.records - r.reported;
            r.reported = r.window.records;
            let failed = r.out.take_failures();
            for (i, l) in r.labels.iter().enumerate() {
                if failed.contains(&i) {
                    self.metrics.sink_errors.get_or_create(l).inc();
                    self.metrics
                        .sink_undelivered
                        .get_or_create(l)
                        .inc_by(records);
                } else {
                    self.metrics.records.get_or_create(l).inc_by(records);
                    self.metrics.record_bytes.get_or_create(l).inc_by(r.bytes);
                }
            }
            r.bytes = 0;
        }
        let accumulating = runs.iter().any(|(_, r)| r.window.has_pending());
        drop(runs);
        if let Some(j) = self.journal.as_mut() {
            // The finished windows' records are written: their ticks are not replayed;
            // with nothing accumulated any more, the journal starts over.
            let done = if accumulating {
                j.done(&finished)
            } else {
                j.clear()
            };
            if let Err(e) = done {
                self.metrics.journal_errors.inc();
                error!(error = %e, "tick journal not updated: a crash before the next window boundary could emit finished windows again");
            }
            self.metrics.journal_bytes.set(j.len() as i64);
        }
        // The records are out: now empty the drained generation (idle for a tick).
        self.maps.clear_idle()?;
        self.metrics
            .drain_seconds
            .observe(drain_start.elapsed().as_secs_f64());
        self.metrics.window_streams.set(streams as i64);
        self.metrics
            .flow_map_fill
            .set(streams as f64 / f64::from(self.cfg.max_flows));
        self.metrics.skipped_streams.inc_by(skipped_total.streams);
        self.metrics.skipped_packets.inc_by(skipped_total.packets);
        self.metrics.skipped_bytes.inc_by(skipped_total.bytes);
        let counters = self.maps.counters()?;
        report_counters(&self.last_counters, &counters);
        self.metrics.add_datapath(&self.last_counters, &counters);
        self.last_counters = counters;
        debug!(streams, "drained");
        Ok(())
    }
}

/// Hands drained streams to the instances (see [`Agent::drain`]).
struct Feed<'a, 'e> {
    ends: &'a [Option<(u64, bool)>],
    by_ifindex: &'a HashMap<u32, Vec<usize>>,
    format: crate::record::RecordFormat,
    offset: i128,
    extra: Option<&'a ExtraFields<'e>>,
}

impl Feed<'_, '_> {
    /// A generation's streams, then its skip counters (see `streams` and `skips`);
    /// returns the number of streams.
    async fn generation(
        &self,
        mut drain: crate::drain::GenerationDrain<'_>,
        runs: &mut [(&String, &mut Running)],
        skip: &[bool],
        mut journaling: Option<&mut Journaling<'_>>,
        total: &mut SkipStats,
    ) -> Result<usize, AgentError> {
        let streams = self
            .streams(&mut drain, runs, skip, journaling.as_deref_mut())
            .await?;
        self.skips(drain.finish()?, runs, skip, journaling, total);
        Ok(streams)
    }

    /// Every stream of a generation to the instances covering its interface; returns
    /// the number of streams.
    async fn streams(
        &self,
        drain: &mut crate::drain::GenerationDrain<'_>,
        runs: &mut [(&String, &mut Running)],
        skip: &[bool],
        mut journaling: Option<&mut Journaling<'_>>,
    ) -> Result<usize, AgentError> {
        let mut batch = Vec::with_capacity(crate::drain::BATCH);
        let mut streams = 0;
        loop {
            batch.clear();
            let more = drain.next_batch(&mut batch)?;
            streams += batch.len();
            for (key, stats) in batch.iter_mut() {
                key.traffic_path = stats.traffic_path;
                if let Some(j) = journaling.as_deref_mut() {
                    if j.ifindexes.contains(&key.ifindex) {
                        j.w.stream(key, stats);
                    }
                }
                let Some(covering) = self.by_ifindex.get(&key.ifindex) else {
                    continue;
                };
                for &i in covering {
                    if skip[i] {
                        continue;
                    }
                    let r = &mut *runs[i].1;
                    match self.ends[i] {
                        Some((end, true)) => {
                            let render = Render {
                                format: self.format,
                                id_scope: &r.id_scope,
                                mono_to_unix: self.offset,
                                extra: self.extra,
                            };
                            let before = r.buf.len();
                            r.window
                                .stream(&r.spec, key, stats, Some((&mut r.buf, &render, end)));
                            r.bytes += (r.buf.len() - before) as u64;
                        }
                        _ => {
                            r.window.stream(&r.spec, key, stats, None);
                        }
                    }
                }
            }
            for (_, r) in runs.iter_mut() {
                if r.buf.len() >= FLUSH_BYTES {
                    r.out.write_batch(&r.buf).await?;
                    r.buf.clear();
                }
            }
            if !more {
                return Ok(streams);
            }
        }
    }

    /// A generation's skip counters to the instances covering each interface.
    fn skips(
        &self,
        skipped: Vec<(u32, SkipStats)>,
        runs: &mut [(&String, &mut Running)],
        skip: &[bool],
        mut journaling: Option<&mut Journaling<'_>>,
        total: &mut SkipStats,
    ) {
        for (ifindex, s) in &skipped {
            total.merge(s);
            if let Some(j) = journaling.as_deref_mut() {
                if j.ifindexes.contains(ifindex) {
                    j.w.skip(*ifindex, s);
                }
            }
            for &i in self.by_ifindex.get(ifindex).into_iter().flatten() {
                if !skip[i] {
                    runs[i].1.window.skipped(*ifindex, s);
                }
            }
        }
    }
}

/// A tick being journaled: its block, and the interfaces of the instances that
/// accumulate it (the streams to write).
struct Journaling<'j> {
    w: TickWriter<'j>,
    ifindexes: HashSet<u32>,
}

/// Starts journaling the tick with window counter `counter` when an instance
/// accumulates it (its window does not end in this drain; `skip`: it has the tick).
fn begin_tick<'j>(
    journal: Option<&'j mut Journal>,
    counter: u32,
    mono_to_unix: i128,
    runs: &[(&String, &mut Running)],
    ends: &[Option<(u64, bool)>],
    skip: &[bool],
) -> Option<Journaling<'j>> {
    let journal = journal?;
    let mut accumulating = Vec::new();
    let mut ifindexes = HashSet::new();
    for (i, (name, r)) in runs.iter().enumerate() {
        if ends[i].is_some() || skip[i] {
            continue;
        }
        accumulating.push(Accumulating {
            name: name.to_string(),
            start_ns: r.window.start_ns,
            window_ns: r.spec.window.as_nanos() as u64,
        });
        ifindexes.extend(r.window.members.keys().copied());
    }
    if accumulating.is_empty() {
        return None;
    }
    let offset = i64::try_from(mono_to_unix).unwrap_or(i64::MAX);
    Some(Journaling {
        w: journal.tick(counter, offset, &accumulating),
        ifindexes,
    })
}

/// Completes a journaled tick (synced to disk): `None` when there was none to write,
/// else whether it was written.
fn seal(journaling: Option<Journaling<'_>>) -> Option<bool> {
    let j = journaling?;
    match j.w.seal() {
        Ok(()) => Some(true),
        Err(e) => {
            error!(error = %e, "tick journal: this tick is accumulated in memory only (a crash before its window ends would lose it)");
            Some(false)
        }
    }
}

/// A crash at a chosen point, for the crash tests (`FLOWLOG_FAILPOINT=<name>`;
/// `tests/tests/restart.rs`). Unset in production: one environment lookup per drain.
fn failpoint(name: &str) -> bool {
    std::env::var_os("FLOWLOG_FAILPOINT").is_some_and(|v| v == name)
}

/// Which instances end their window in a drain.
#[derive(Clone, Copy)]
enum Due<'a> {
    /// Those whose window ends at this tick.
    Boundary,
    /// One instance (stopped or deleted): its partial window.
    One(&'a str),
    /// Every instance (the agent stops).
    All,
}

impl Agent<'_> {
    /// One control request. Bad requests change nothing and say why; only failures
    /// of the agent itself (a sink gone for good, the maps) are errors.
    async fn handle(&mut self, req: Request) -> Result<Response, AgentError> {
        debug!(request = ?req, "control request");
        let now = unix_now_ns()?;
        let fail = |e: RegistryError| Response::error(e.to_string());
        match req {
            Request::List => Ok(Response {
                flow_logs: Some(
                    self.registry
                        .entries()
                        .iter()
                        .map(|e| self.status(&e.spec.name))
                        .collect(),
                ),
                ..Response::ok()
            }),
            Request::Describe { name } => match self.registry.get(&name) {
                None => Ok(Response::error(InstanceError::Unknown { name }.to_string())),
                Some(_) => Ok(Response {
                    flow_log: Some(self.status(&name)),
                    ..Response::ok()
                }),
            },
            Request::Create { flow_log } => {
                let flow_log = *flow_log;
                let (sinks, paths_configured) = self.checks_lenient();
                let links = &self.links;
                let exists = |n: &str| scope::exists(links, n);
                let bridge = |n: &str| scope::is_bridge(links, n);
                let checks = Checks {
                    interface_exists: Some(&exists),
                    bridge_exists: &bridge,
                    paths_configured,
                    sinks: &sinks,
                };
                let (spec, active) = match FlowLogSpec::validate(&flow_log, &checks) {
                    Ok(v) => v,
                    Err(e) => return Ok(Response::error(e.to_string())),
                };
                let name = spec.name.clone();
                if let Err(e) = self.registry.create(spec, active) {
                    return Ok(fail(e));
                }
                info!(flow_log = %name, "flow log created");
                if active {
                    if let Err(e) = self.start_running(&name, now).await {
                        // Its destination cannot be opened: undo, and say why.
                        let _ = self.registry.delete(&name);
                        return Ok(Response::error(e.to_string()));
                    }
                    self.reconcile(now);
                }
                Ok(Response {
                    flow_log: Some(self.status(&name)),
                    ..Response::ok()
                })
            }
            Request::Start { name } => {
                match self.registry.set_active(&name, true) {
                    Err(e) => return Ok(fail(e)),
                    Ok(false) => {}
                    Ok(true) => {
                        if let Err(e) = self.start_running(&name, now).await {
                            let _ = self.registry.set_active(&name, false);
                            return Ok(Response::error(e.to_string()));
                        }
                        self.reconcile(now);
                    }
                }
                Ok(Response {
                    flow_log: Some(self.status(&name)),
                    ..Response::ok()
                })
            }
            Request::Stop { name } => {
                match self.registry.set_active(&name, false) {
                    Err(e) => return Ok(fail(e)),
                    Ok(false) => {}
                    Ok(true) => self.stop_running(&name, now).await?,
                }
                Ok(Response {
                    flow_log: Some(self.status(&name)),
                    ..Response::ok()
                })
            }
            Request::Delete { name } => {
                let was_running = self.running.contains_key(&name);
                // Validate first (unknown, declared): nothing changes on a bad request.
                if let Err(e) = self.registry.delete(&name) {
                    return Ok(fail(e));
                }
                if was_running {
                    self.stop_running(&name, now).await?;
                }
                info!(flow_log = %name, "flow log deleted");
                Ok(Response::ok())
            }
        }
    }

    /// Emits an instance's partial window, closes its sinks and releases what only it
    /// needed.
    async fn stop_running(&mut self, name: &str, now: u64) -> Result<(), AgentError> {
        self.drain(now, now, Due::One(name)).await?;
        if let Some(mut r) = self.running.remove(name) {
            if let Err(e) = r.out.close().await {
                warn!(flow_log = %name, error = %e, "closing its sinks");
            }
        }
        info!(flow_log = %name, "flow log stopped");
        self.retick();
        self.reconcile(now);
        Ok(())
    }

    fn status(&self, name: &str) -> Status {
        let e = self.registry.get(name).expect("known flow log");
        let r = self.running.get(name);
        Status {
            flow_log: e.spec.to_file(e.active),
            origin: match e.origin {
                Origin::Cli => "cli",
                Origin::Config => "config",
                Origin::Api => "api",
            }
            .to_owned(),
            interfaces: r
                .map(|r| {
                    r.window
                        .members
                        .values()
                        .filter(|m| m.gone_ns.is_none())
                        .map(|m| m.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            records: r.map_or(0, |r| r.window.records),
        }
    }

    /// Takes over the links a previous agent pinned, for the interfaces that still
    /// exist (the pins of gone ones are removed).
    fn adopt_links(&mut self) {
        let Some(pins) = self.pins.clone() else {
            return;
        };
        let mut by_if: BTreeMap<u32, Vec<(String, std::path::PathBuf)>> = BTreeMap::new();
        for (ifindex, hook, path) in pins.links() {
            by_if.entry(ifindex).or_default().push((hook, path));
        }
        for (ifindex, hooks) in by_if {
            let Some(name) = self.links.get(&ifindex).map(|l| l.name.clone()) else {
                for (_, p) in hooks {
                    let _ = std::fs::remove_file(p);
                }
                continue;
            };
            let mut held = Vec::new();
            let mut names = Vec::new();
            let mut failed = hooks.len() != 2;
            for (hook, path) in hooks {
                match loader::adopt_link(&mut self.ebpf, self.cfg.mode, &hook, &path, &name) {
                    Ok(link) => {
                        held.push((link, path));
                        names.push(format!("adopted {hook}"));
                    }
                    Err(e) => {
                        warn!(interface = %name, error = %e, "pinned link not adopted");
                        let _ = std::fs::remove_file(&path);
                        failed = true;
                    }
                }
            }
            let links = loader::adopted(&name, held, names.join(", "));
            if failed {
                // Attached afresh by the reconcile that follows.
                loader::detach_one(links);
                continue;
            }
            info!(interface = %name, ifindex, hooks = %links.hooks, "adopted");
            self.attached.insert(ifindex, links);
        }
    }

    /// Closes every sink and detaches everything.
    async fn shutdown(&mut self) {
        for (name, r) in self.running.iter_mut() {
            if let Err(e) = r.out.close().await {
                warn!(flow_log = %name, error = %e, "closing its sinks");
            }
        }
        for (name, s) in &self.shared {
            if let Err(e) = s.lock().await.close().await {
                warn!(sink = %name, error = %e, "closing the sink");
            }
        }
        let attached = std::mem::take(&mut self.attached);
        for (_, links) in attached {
            if self.handover {
                loader::hand_over(links);
            } else {
                loader::detach_one(links);
            }
        }
        if let (Some(pins), false) = (&self.pins, self.handover) {
            // A clean stop leaves nothing behind.
            if let Err(e) = pin::cleanup(&pins.root) {
                warn!(error = %e, "removing the pins");
            }
        }
    }
}

/// Opens a `[[sink]]`.
async fn open_named(
    s: &SinkConfig,
    cfg: &Config,
    metrics: &Metrics,
) -> Result<Box<dyn Sink>, AgentError> {
    Ok(match &s.kind {
        SinkKind::Stdout => {
            let plain = Box::new(sink::WriterSink::new(tokio::io::stdout(), &s.name));
            match &s.text {
                Some(t) => Box::new(sink::TextSink::new(plain, t.clone())),
                None => plain,
            }
        }
        // The file sink converts itself (a header at the top of every file).
        SinkKind::File(settings) => {
            Box::new(sink::file::DirSink::open(&s.name, settings.clone()).await?)
        }
        SinkKind::Parquet(settings) => {
            let columns = sink::parquet_schema::ParquetColumns::new(
                cfg.record_format == crate::record::RecordFormat::Extended,
                pod_labels(cfg),
            );
            Box::new(sink::parquet::ParquetSink::open(&s.name, settings.clone(), columns).await?)
        }
        SinkKind::Tcp { address, spool } => {
            let header = s.text.as_ref().map(|t| t.header());
            let dest = Box::new(sink::tcp::TcpDeliver::new(address, header));
            spooled(s, spool, dest, metrics, s.text.clone())?
        }
        // The IPFIX and Kafka destinations take the spooled JSON lines and encode
        // them themselves (Kafka converts to text per record, after taking its key).
        SinkKind::Ipfix { settings, spool } => {
            let dest = Box::new(sink::ipfix::IpfixDeliver::new(settings.clone()));
            spooled(s, spool, dest, metrics, None)?
        }
        SinkKind::Kafka { settings, spool } => {
            let dest = Box::new(sink::kafka::KafkaDeliver::new(
                settings.clone(),
                s.text.clone(),
            ));
            spooled(s, spool, dest, metrics, None)?
        }
    })
}

/// A network sink: its spool, delivering to `dest`; `text` converts before spooling.
fn spooled(
    s: &SinkConfig,
    spool: &sink::spool::SpoolSettings,
    dest: Box<dyn sink::spool::Deliver>,
    metrics: &Metrics,
    text: Option<sink::text::TextFormat>,
) -> Result<Box<dyn Sink>, AgentError> {
    let opened = sink::spool::Spool::open(&s.name, spool, dest, metrics.spool_stats(&s.name))
        .map_err(|e| SinkError::Open {
            path: spool.dir.clone(),
            source: std::io::Error::other(e),
        })?;
    Ok(Box::new(sink::spool::SpooledSink::new(
        &s.name, opened, text,
    )))
}

/// The pod label keys copied into records, with pod metadata on.
fn pod_labels(cfg: &Config) -> Option<&[String]> {
    #[cfg(feature = "kubernetes")]
    {
        cfg.kubernetes.as_ref().map(|k| k.labels.as_slice())
    }
    #[cfg(not(feature = "kubernetes"))]
    {
        let _ = cfg;
        None
    }
}

/// Renders the body of `flowlog list`.
pub fn list_table(flow_logs: &[Status]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "STATE".to_owned(),
        "RESOURCE".to_owned(),
        "WINDOW".to_owned(),
        "TRAFFIC".to_owned(),
        "IP".to_owned(),
        "PATHS".to_owned(),
        "INTERFACES".to_owned(),
    ]];
    for s in flow_logs {
        let f: &FlowLogFile = &s.flow_log;
        let ids = f.resource_ids.join(",");
        rows.push([
            f.name.clone(),
            f.state.clone().unwrap_or_default(),
            if ids.is_empty() {
                f.resource_type.clone()
            } else {
                format!("{}:{ids}", f.resource_type)
            },
            f.window.clone().unwrap_or_default(),
            f.traffic_type.clone().unwrap_or_default(),
            f.ip_version.clone().unwrap_or_default(),
            f.traffic_path.clone().unwrap_or_default(),
            if s.interfaces.is_empty() {
                "-".to_owned()
            } else {
                s.interfaces.join(",")
            },
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, v)| format!("{v:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Forwards the programs' aya-log records (rare events such as a full flow map) to
/// the agent's log.
fn spawn_kernel_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "kernel-side logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd for its whole life and always
    // returns the same one; the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "kernel-side logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Logs data-path events of the last window that an operator should know about.
fn report_counters(before: &[u64], after: &[u64]) {
    for (i, name) in counter::NAMES.iter().enumerate() {
        let delta = after[i].saturating_sub(before[i]);
        if delta == 0 {
            continue;
        }
        match i as u32 {
            counter::SEEN | counter::NOT_IP => debug!(counter = name, delta, "data path"),
            counter::FLOW_MAP_FULL => {
                warn!(
                    counter = name,
                    delta, "flow map full: packets reported as SKIPDATA (raise --max-flows)"
                )
            }
            counter::SKIP_MAP_FULL | counter::MAP_ERROR => {
                warn!(counter = name, delta, "packets lost to the log")
            }
            _ => info!(counter = name, delta, "data path"),
        }
    }
}

/// Bytes of rendered records collected before they are handed to the sinks.
const FLUSH_BYTES: usize = 1 << 20;
