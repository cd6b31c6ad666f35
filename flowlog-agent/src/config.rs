//! Command line and configuration file, parsed once into a validated [`Config`].
//!
//! Sources, weakest first: built-in defaults, the TOML file given with `--config`,
//! then command-line flags. A flag always wins over the file, including the node
//! metadata flags (`--vpc-id` etc.), which then apply to every interface even where
//! the file sets a per-interface value. An empty metadata value (`--vpc-id ""` or
//! `vpc_id = ""`) means explicitly unset (`-` in records).
//!
//! Interfaces are the union of the file's `[[interfaces]]` and `--interface` flags,
//! merged by name in first-seen order (file first). Each is resolved to its ifindex
//! when the configuration is built, so an unknown name fails at start-up with a
//! clear message. `--eni-id IF=ID` maps a selected interface to its ENI id (winning
//! over the file's `eni_id`); the `eni-id` field defaults to the interface name.
//!
//! File shape (every table rejects unknown keys):
//!
//! ```toml
//! window = "1m"          # 10s, 90s, 1m, 5m, 10m...
//! mode = "tc"            # or "xdp": XDP program for ingress, TC for egress
//! xdp_attach = "auto"    # or "native", "generic" (mode = "xdp" only)
//! max_flows = 65536      # streams per window per node (flow map capacity)
//! output = "-"           # "-" = stdout, or a file path (records appended)
//! policy = "policy.toml" # security policy (rule sets), reloaded on SIGHUP
//! transfer_type = "all"  # all | allow (ACCEPT records only) | reject (REJECT only)
//! record_format = "base" # base | extended (adds rule-id and record-id)
//! agent_id = "gw-1"      # this agent in record ids (default: the host name)
//! metrics_address = ":9464" # /metrics, /healthz, /readyz on 127.0.0.1:9464 (default off)
//! [kubernetes]           # pod metadata in records (feature `kubernetes`)
//! mode = "auto"          # auto (in a cluster or with kubeconfig) | on | off
//! kubeconfig = "kc.yaml" # default: the in-cluster service account
//! labels = ["app"]       # pod labels copied into records
//! node_name = "node-1"   # default: $NODE_NAME, else the host name
//! [metadata]
//! account_id = "1210123456"
//! vm_id = "i-1"
//! vswitch_id = "vsw-1"
//! vpc_id = "vpc-1"
//! [[interfaces]]
//! name = "eth0"
//! eni_id = "eni-bp166tg9uk1ryf"   # optional, default the interface name
//! vm_id = "i-2"                   # optional per-interface vm_id/vswitch_id/vpc_id
//! ```
//!
//! A relative `output` path is taken relative to the agent's working directory, not
//! to the configuration file.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::{
    policy::{Policy, PolicyError},
    record::{InterfaceMeta, RecordFormat},
    window::{parse_window, WindowError},
};

/// Capture window when neither the file nor `--window` sets one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Flow map capacity (streams per window per node) by default.
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Largest accepted `max_flows`.
pub const MAX_FLOWS_LIMIT: u32 = 16_777_216;
/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX_LEN: usize = 15;
/// Process exit code for configuration and usage errors (as clap uses).
pub const EXIT_USAGE: i32 = 2;

/// `flowlog` command line.
#[derive(Debug, Parser)]
#[command(name = "flowlog", version, about = "eBPF VPC flow log agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture streams on interfaces and emit a flow log record per stream at
    /// every capture-window boundary.
    Run(RunArgs),
    /// Run SQL over flow log files, as in the log service: '<search> | <SQL>' over
    /// the table `log` (runs the separately installed `flowlog-query`; see the
    /// README's "Querying the logs").
    #[command(disable_help_flag = true)]
    Query(PassThrough),
    /// Run the built-in reports over flow log files: print their tables and write
    /// one self-contained HTML page with charts (runs `flowlog-query`).
    #[command(disable_help_flag = true)]
    Report(PassThrough),
    /// Create a flow log on the running agent (through its control socket).
    Create(CreateArgs),
    /// Start (resume) a stopped flow log.
    Start(NameArgs),
    /// Stop a flow log: its partial window is emitted and its capture ends.
    Stop(NameArgs),
    /// Delete a flow log created with `flowlog create` (its partial window is emitted).
    Delete(NameArgs),
    /// List the flow logs of the running agent.
    List(SocketArgs),
    /// Show one flow log (settings, state, interfaces captured now) as JSON.
    Describe(NameArgs),
}

/// `--socket` of the control commands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct SocketArgs {
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::instance::control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

/// A flow log name and `--socket`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct NameArgs {
    /// The flow log.
    pub name: String,
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// `flowlog create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct CreateArgs {
    /// Name of the flow log (letters, digits, '-', '_', '.').
    pub name: String,
    /// ENI (interfaces by name), vSwitch (a bridge's ports, or a glob such as
    /// "veth*") or VPC (every interface but lo); case-insensitive.
    #[arg(long, value_name = "T")]
    pub resource_type: String,
    /// An interface (ENI), a bridge or glob (vSwitch), the network's id (VPC,
    /// optional); repeatable.
    #[arg(long = "resource-id", value_name = "ID")]
    pub resource_ids: Vec<String>,
    /// Capture window: 1m, 5m or 10m (whole seconds up to 600 are accepted)
    /// [default: 10m]
    #[arg(long, value_name = "W")]
    pub window: Option<String>,
    /// All, Allow (ACCEPT records only) or Reject (REJECT only) [default: All]
    #[arg(long, value_name = "TYPE")]
    pub traffic_type: Option<String>,
    /// IPv4 or Dual-stack [default: Dual-stack]
    #[arg(long, value_name = "V")]
    pub ip_version: Option<String>,
    /// all, or traffic_path values such as 9,13 (needs [paths]) [default: all]
    #[arg(long, value_name = "all|N,N,...")]
    pub traffic_path: Option<String>,
    /// Where its records go: "-" for the agent's stdout, or a file (appended)
    #[arg(long, value_name = "-|FILE")]
    pub output: Option<String>,
    /// A [[sink]] of the agent's config file (repeatable).
    #[arg(long = "sink", value_name = "NAME")]
    pub sinks: Vec<String>,
    /// Free text.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Create it stopped.
    #[arg(long)]
    pub inactive: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

/// Arguments handed unchanged to the `flowlog-query` binary (including `--help`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct PassThrough {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

/// Raw flags of `flowlog run`; turned into a [`Config`] by [`Config::from_args`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RunArgs {
    /// Interface to capture on (repeatable). Merged with [[interfaces]] of the config
    /// file.
    #[arg(short = 'i', long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Capture window, aligned to wall-clock multiples: 10s, 90s, 1m, 5m, 10m...
    /// [default: 1m]
    #[arg(long, value_name = "DUR", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// TOML configuration file. Flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Programs to attach [default: tc]
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// How to attach the XDP program with --mode xdp [default: auto]
    #[arg(long, value_enum, value_name = "HOW")]
    pub xdp_attach: Option<XdpAttach>,
    /// Streams per window per node: the flow map capacity, 1 to 16777216. Streams
    /// beyond it are counted in a SKIPDATA record. [default: 65536]
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u64>,
    /// Where records go: "-" for stdout, or a file (appended) [default: -]
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// account-id of every record.
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
    /// vm-id of every record.
    #[arg(long, value_name = "ID")]
    pub vm_id: Option<String>,
    /// vswitch-id of every record.
    #[arg(long, value_name = "ID")]
    pub vswitch_id: Option<String>,
    /// vpc-id of every record.
    #[arg(long, value_name = "ID")]
    pub vpc_id: Option<String>,
    /// ENI id of a selected interface, as IF=ID (repeatable). Default: the interface
    /// name.
    #[arg(long = "eni-id", value_name = "IF=ID")]
    pub eni_ids: Vec<String>,
    /// Security policy file (rule sets; see the README). Reloaded on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Which records to emit: all, allow (ACCEPT only) or reject (REJECT only)
    /// [default: all]
    #[arg(long, value_enum, value_name = "TYPE")]
    pub transfer_type: Option<TransferType>,
    /// Record fields: base (the contract's) or extended (adds rule-id) [default: base]
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub record_format: Option<RecordFormat>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on HOST:PORT; ":PORT" is
    /// loopback (127.0.0.1:PORT) [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<String>,
    /// Pod metadata in records from the Kubernetes API: auto (on inside a cluster or
    /// with --kubeconfig), on, off [default: auto]
    #[arg(long, value_enum, value_name = "WHEN")]
    pub kubernetes: Option<KubernetesMode>,
    /// Kubeconfig file for the pod watch (default: the in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// A pod label copied into records as src-pod-label-KEY / dst-pod-label-KEY
    /// (repeatable).
    #[arg(long = "pod-label", value_name = "KEY")]
    pub pod_labels: Vec<String>,
    /// Send the records to the [[sink]] of this name in the config file (repeatable;
    /// instead of --output unless that is given too).
    #[arg(long = "sink", value_name = "NAME")]
    pub sinks: Vec<String>,
    /// This agent's id in record ids (--record-format extended) [default: host name]
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Serve the control socket (flowlog create/start/stop/...) here [default:
    /// /run/flowlog/flowlog.sock, or none with --interface]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Keep flow logs created through the socket here [default: /var/lib/flowlog, or
    /// none with --interface]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Pin maps and links in this bpffs directory so that counting survives the agent
    /// (crash, SIGKILL, SIGUSR2 hand-over) and the next agent adopts them [default:
    /// /sys/fs/bpf/flowlog when it is a bpffs, or none with --interface]
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Remove everything pinned under the pin directory (detaching its programs) and
    /// exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// One `[[sink]]` of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSink {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `file`, `parquet`: the directory.
    pub path: Option<PathBuf>,
    /// `json` (the default) or `text` (space-separated, with a header line).
    pub format: Option<String>,
    /// `text`: the fields, in order (default: the contract's base fields).
    pub fields: Option<Vec<String>>,
    /// Rotate a file once it holds this many bytes: a number, or `128MiB`, `1GB`.
    pub rotate_bytes: Option<Size>,
    /// Rotate a file once it is this old: `90s`, `30m`, `1h`, `1d`.
    pub rotate_after: Option<String>,
    /// `file`, `parquet`: delete finished files older than this (default 7d).
    pub retention: Option<String>,
    /// `file`, `parquet`: keep at most this many bytes of finished files (oldest
    /// deleted first).
    pub retention_bytes: Option<Size>,
    /// `parquet`: windows per file (default 1).
    pub windows_per_file: Option<u32>,
    /// `tcp`: the receiver, `host:port`.
    pub address: Option<String>,
    /// Network sinks: the spool directory (default `/var/lib/flowlog/spool/<name>`).
    pub spool_dir: Option<PathBuf>,
    /// Network sinks: the spool's bound in bytes (default 256 MiB).
    pub spool_max_bytes: Option<Size>,
    /// `ipfix`: `udp` (the default) or `tcp`.
    pub transport: Option<String>,
    /// `ipfix` over UDP: resend the templates this often (default 60s).
    pub template_refresh: Option<String>,
    /// `ipfix`: the path MTU towards the collector; messages stay under it (default
    /// 1500).
    pub mtu: Option<u32>,
    /// `ipfix`: the observation domain id (default 0).
    pub observation_domain: Option<u32>,
    /// `ipfix`: the private enterprise number of flowlog's own elements (default
    /// 32473, RFC 5612's number for documentation).
    pub enterprise_number: Option<u32>,
    /// `kafka`: bootstrap brokers, `host:port` each.
    pub brokers: Option<Vec<String>>,
    /// `kafka`: the topic.
    pub topic: Option<String>,
    /// `kafka`: `lz4` (the default), `zstd` or `none`.
    pub compression: Option<String>,
}

/// A byte count as written in the config file: a number of bytes, or a string with a
/// unit (`"128MiB"`, `"10 GiB"`, `"500MB"`; see [`parse_size`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

/// A byte count with an optional unit: `B`; `KiB`, `MiB`, `GiB`, `TiB` (powers of
/// 1024, also written `Ki`, `Mi`, `Gi`, `Ti` as Kubernetes does); `kB`/`KB`, `MB`,
/// `GB`, `TB` (powers of 1000). A whole number, spaces allowed before the unit. A bare
/// `K`, `M`, `G` or `T` is refused: tools disagree on whether it means 1000 or 1024.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use a whole number of bytes, or one with a unit such as 128MiB or 1GB"))?;
    let unit = unit.trim_start();
    let mult: u64 = match unit {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "K" | "k" | "M" | "G" | "T" => {
            return Err(format!(
                "{text:?}: say {n}{u}iB (powers of 1024) or {n}{u}B (powers of 1000)",
                u = unit.to_ascii_uppercase()
            ))
        }
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}: use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A destination of records, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    /// `format = "text"` (for a file sink also in its [`DirSettings`]).
    ///
    /// [`DirSettings`]: crate::sink::file::DirSettings
    pub text: Option<crate::sink::text::TextFormat>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    Stdout,
    /// JSON lines in a directory, rotated and pruned ([`crate::sink::file`]).
    File(crate::sink::file::DirSettings),
    /// Parquet files in a partitioned tree ([`crate::sink::parquet`]).
    Parquet(crate::sink::parquet::ParquetSettings),
    /// Lines over TCP through a spool ([`crate::sink::tcp`]).
    Tcp {
        address: String,
        spool: crate::sink::spool::SpoolSettings,
    },
    /// IPFIX messages to a flow collector through a spool ([`crate::sink::ipfix`]).
    Ipfix {
        settings: crate::sink::ipfix::IpfixSettings,
        spool: crate::sink::spool::SpoolSettings,
    },
    /// One Kafka message per record through a spool ([`crate::sink::kafka`]).
    Kafka {
        settings: crate::sink::kafka::KafkaSettings,
        spool: crate::sink::spool::SpoolSettings,
    },
}

/// When to watch the Kubernetes API for pod metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KubernetesMode {
    /// Inside a cluster (`KUBERNETES_SERVICE_HOST` set) or with a kubeconfig file.
    #[default]
    Auto,
    On,
    Off,
}

/// `[kubernetes]` of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKubernetes {
    pub mode: Option<KubernetesMode>,
    pub kubeconfig: Option<PathBuf>,
    #[serde(default)]
    pub labels: Vec<String>,
    pub node_name: Option<String>,
}

/// The pod watch, when on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    /// A kubeconfig file; `None`: the in-cluster service account (or `KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// Pod label keys copied into records.
    pub labels: Vec<String>,
    /// This node's name (the `node-name` field): `node_name`, else `$NODE_NAME`, else
    /// the host name.
    pub node_name: String,
}

/// The contract's data transfer type: which verdicts are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferType {
    /// ACCEPT and REJECT records.
    #[default]
    All,
    /// Only ACCEPT records.
    Allow,
    /// Only REJECT records.
    Reject,
}

/// Which programs capture the traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TC programs on ingress and egress.
    #[default]
    Tc,
    /// XDP program on ingress, TC program on egress.
    Xdp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Tc => "tc",
            Mode::Xdp => "xdp",
        })
    }
}

/// How the XDP program is attached (only with [`Mode::Xdp`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttach {
    /// Native (driver) mode where the driver supports it, otherwise generic.
    #[default]
    Auto,
    /// Driver mode only; fail if the driver lacks XDP support.
    Native,
    /// Generic (skb) mode.
    Generic,
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttach::Auto => "auto",
            XdpAttach::Native => "native",
            XdpAttach::Generic => "generic",
        })
    }
}

/// Where records are written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Output {
    #[default]
    Stdout,
    /// A file, opened in append mode (created if missing).
    File(PathBuf),
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Stdout => f.write_str("stdout"),
            Output::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The configuration file, as written (see the module docs for the shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub window: Option<String>,
    pub mode: Option<Mode>,
    pub xdp_attach: Option<XdpAttach>,
    pub max_flows: Option<u64>,
    pub output: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub transfer_type: Option<TransferType>,
    pub record_format: Option<RecordFormat>,
    pub metrics_address: Option<String>,
    /// Sinks (by name) of the records of `flowlog run`.
    #[serde(default)]
    pub sinks: Vec<String>,
    pub agent_id: Option<String>,
    #[serde(default, rename = "sink")]
    pub sink_defs: Vec<FileSink>,
    #[serde(default)]
    pub kubernetes: FileKubernetes,
    #[serde(default)]
    pub metadata: FileMetadata,
    #[serde(default)]
    pub interfaces: Vec<FileInterface>,
    /// Flow logs declared here.
    #[serde(default)]
    pub flow_log: Vec<crate::instance::FlowLogFile>,
    /// traffic_path classification.
    pub paths: Option<crate::paths::PathsFile>,
    /// Control socket path.
    pub socket: Option<PathBuf>,
    /// Group allowed to use the control socket (mode 0660); default owner only.
    pub socket_group: Option<String>,
    /// Where flow logs created through the socket are kept.
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: Option<PathBuf>,
    /// Instances per node (default 10).
    pub max_flow_logs: Option<usize>,
}

/// `[metadata]`: node-wide record fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetadata {
    pub account_id: Option<String>,
    pub vm_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub vpc_id: Option<String>,
}

/// One `[[interfaces]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInterface {
    pub name: String,
    pub eni_id: Option<String>,
    pub vm_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub vpc_id: Option<String>,
}

/// Validated configuration of `flowlog run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// At least one, distinct names and ifindexes, in first-seen order.
    pub interfaces: Vec<InterfaceConfig>,
    /// Capture window, a positive whole number of seconds.
    pub window: Duration,
    pub mode: Mode,
    pub xdp_attach: XdpAttach,
    /// Flow map capacity, 1..=[`MAX_FLOWS_LIMIT`].
    pub max_flows: u32,
    pub output: Output,
    /// Path of the policy file and the policy it held at start-up.
    pub policy: Option<(PathBuf, Policy)>,
    pub transfer_type: TransferType,
    pub record_format: RecordFormat,
    /// Where /metrics, /healthz and /readyz are served (off when `None`).
    pub metrics_address: Option<SocketAddr>,
    /// The pod watch (off when `None`).
    pub kubernetes: Option<KubeSettings>,
    /// Named sinks the records go to (besides `output` when `output_explicit`).
    pub sinks: Vec<SinkConfig>,
    /// `output` was set (flag or file), so it receives records even with sinks.
    pub output_explicit: bool,
    /// This agent's part of record ids (`--agent-id`, `agent_id`, else the host name).
    pub agent_id: String,
    /// Every `[[sink]]` of the config file (flow logs name them).
    pub sink_defs: Vec<SinkConfig>,
    /// `[[flow_log]]` of the config file, as written (validated against the link table
    /// when the agent starts).
    pub flow_logs: Vec<crate::instance::FlowLogFile>,
    /// traffic_path classification (`[paths]`).
    pub paths: Option<crate::paths::Paths>,
    /// Control socket (`None`: no API, the `--interface` mode without `--socket`).
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    /// State directory (`None`: instances are not saved).
    pub state_dir: Option<PathBuf>,
    /// bpffs directory of pinned maps and links (`None`: nothing outlives the agent).
    pub pin_dir: Option<PathBuf>,
    /// `--cleanup`: remove the pins and exit.
    pub cleanup: bool,
    pub max_flow_logs: usize,
    /// Record metadata of an interface the config does not list (eni-id = its name).
    pub node_meta: InterfaceMeta,
}

/// Default state directory of the daemon.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/flowlog";
/// Default pin directory of the daemon (when `/sys/fs/bpf` is a bpffs).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/flowlog";

impl Config {
    /// Record metadata of an interface: its `[[interfaces]]` entry (or `--interface`
    /// with `--eni-id`), else the node's.
    pub fn meta_for(&self, name: &str) -> InterfaceMeta {
        match self.interfaces.iter().find(|i| i.name == name) {
            Some(i) => i.meta.clone(),
            None => InterfaceMeta {
                eni_id: name.to_owned(),
                ..self.node_meta.clone()
            },
        }
    }
}

/// One interface to capture on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub name: String,
    pub ifindex: u32,
    /// Identity written into its records.
    pub meta: InterfaceMeta,
}

/// A configuration that cannot be used; every message names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Policy(Box<PolicyError>),
    #[error("rule set {set:?} names interface {interface:?}, which is not captured: add --interface {interface}")]
    PolicyInterface { interface: String, set: String },
    #[error("cannot read config file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {}: {source}", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{field}: {source}")]
    Window {
        field: &'static str,
        #[source]
        source: WindowError,
    },
    #[error("{field}: {value} is out of range: the flow map holds 1 to {MAX_FLOWS_LIMIT} streams")]
    MaxFlows { field: &'static str, value: u64 },
    #[error("{field}: output is empty: use \"-\" for stdout or a file path")]
    EmptyOutput { field: &'static str },
    #[error("{field}: {value:?} is not an address: use HOST:PORT (127.0.0.1:9464, [::1]:9464) or :PORT for loopback")]
    MetricsAddress { field: &'static str, value: String },
    #[error("{field}: pod metadata needs a flowlog built with the `kubernetes` feature (the container image has it): cargo build --features kubernetes")]
    KubernetesNotBuilt { field: &'static str },
    #[error("{field}: {value:?} is not a label key")]
    PodLabel { field: &'static str, value: String },
    #[error("{field}: no [[sink]] named {name:?} in the config file (defined: {defined})")]
    UnknownSink {
        field: &'static str,
        name: String,
        defined: String,
    },
    #[error("[[sink]] {name:?}: {problem}")]
    BadSink { name: String, problem: String },
    #[error(transparent)]
    Paths(#[from] crate::paths::PathsError),
    #[error("[[flow_log]] {name:?}: {source}")]
    FlowLog {
        name: String,
        #[source]
        source: crate::instance::InstanceError,
    },
    #[error("{field}: interface name is empty")]
    InterfaceNameEmpty { field: &'static str },
    #[error(
        "{field}: interface name {name:?} is {len} bytes long; Linux interface names have \
         at most {IFNAME_MAX_LEN}"
    )]
    InterfaceNameTooLong {
        field: &'static str,
        name: String,
        len: usize,
    },
    #[error(
        "{field}: interface name {name:?} contains {found:?}, which Linux interface names \
         cannot contain"
    )]
    InterfaceNameInvalid {
        field: &'static str,
        name: String,
        found: char,
    },
    #[error("interface {name:?} does not exist on this node (see `ip link`)")]
    UnknownInterface { name: String },
    #[error(
        "interfaces {first:?} and {second:?} are the same device (ifindex {ifindex}): \
         list it once"
    )]
    SameDevice {
        first: String,
        second: String,
        ifindex: u32,
    },
    #[error("--eni-id {value:?}: expected IF=ID, e.g. --eni-id eth0=eni-bp166tg9uk1ryf")]
    EniIdSyntax { value: String },
    #[error(
        "--eni-id {interface}={eni_id}: interface {interface:?} is not selected: add \
         --interface {interface} or list it in [[interfaces]]"
    )]
    EniIdForUnselectedInterface { interface: String, eni_id: String },
    #[error(
        "[[interfaces]] {interface:?}: eni_id is empty: leave it out to use the interface \
         name"
    )]
    EmptyEniId { interface: String },
    #[error("interface {interface:?}: conflicting {field} values {first:?} and {second:?}")]
    Conflict {
        interface: String,
        field: &'static str,
        first: String,
        second: String,
    },
}

impl ConfigError {
    /// Exit code of the process for this error: always [`EXIT_USAGE`].
    pub fn exit_code(&self) -> i32 {
        EXIT_USAGE
    }
}

/// Resolves an interface name to its ifindex with `if_nametoindex(3)`; `None` when
/// no such interface exists (or the name cannot be a C string).
pub fn resolve_ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Parses the text of a configuration file; `path` is only used in errors.
pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|source| ConfigError::Toml {
        path: path.to_owned(),
        source,
    })
}

/// An interface while sources are merged.
#[derive(Default)]
struct Pending {
    name: String,
    eni_id: Option<String>,
    /// From `--eni-id`, wins over `eni_id`.
    flag_eni_id: Option<String>,
    vm_id: Option<String>,
    vswitch_id: Option<String>,
    vpc_id: Option<String>,
}

const FIELD_FILE_IFNAME: &str = "config file [[interfaces]] name";

impl Config {
    /// Builds the configuration from the flags and the file named by `--config`
    /// (if any), resolving interfaces with [`resolve_ifindex`].
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(parse_file(&text, path)?)
            }
            None => None,
        };
        Config::from_parts(args, file, resolve_ifindex)
    }

    /// Builds the configuration from flags and an already parsed file; `resolve`
    /// maps an interface name to its ifindex (`None`: no such interface).
    /// `args.config` is ignored here.
    pub fn from_parts(
        args: &RunArgs,
        file: Option<FileConfig>,
        resolve: impl Fn(&str) -> Option<u32>,
    ) -> Result<Config, ConfigError> {
        let file = file.unwrap_or_default();

        let window = match (&args.window, &file.window) {
            (Some(s), _) => parse_window(s).map_err(|source| ConfigError::Window {
                field: "--window",
                source,
            })?,
            (None, Some(s)) => parse_window(s).map_err(|source| ConfigError::Window {
                field: "config file window",
                source,
            })?,
            (None, None) => DEFAULT_WINDOW,
        };

        let max_flows = match (args.max_flows, file.max_flows) {
            (Some(v), _) => check_max_flows(v, "--max-flows")?,
            (None, Some(v)) => check_max_flows(v, "config file max_flows")?,
            (None, None) => DEFAULT_MAX_FLOWS,
        };

        let output = match (&args.output, &file.output) {
            (Some(p), _) => output_from(p, "--output")?,
            (None, Some(p)) => output_from(p, "config file output")?,
            (None, None) => Output::Stdout,
        };
        let (sinks, sink_defs) = select_sinks(args, &file)?;
        let output_explicit = args.output.is_some() || file.output.is_some();
        let agent_id = args
            .agent_id
            .clone()
            .or_else(|| file.agent_id.clone())
            .filter(|id| !id.is_empty())
            .or_else(hostname)
            .unwrap_or_else(|| "-".into());

        let mut pending: Vec<Pending> = Vec::new();
        for entry in file.interfaces {
            check_ifname(&entry.name, FIELD_FILE_IFNAME)?;
            if entry.eni_id.as_deref() == Some("") {
                return Err(ConfigError::EmptyEniId {
                    interface: entry.name,
                });
            }
            let slot = match pending.iter_mut().position(|p| p.name == entry.name) {
                Some(i) => &mut pending[i],
                None => {
                    pending.push(Pending {
                        name: entry.name.clone(),
                        ..Pending::default()
                    });
                    pending.last_mut().expect("just pushed")
                }
            };
            let name = &entry.name;
            merge(&mut slot.eni_id, entry.eni_id, name, "eni_id")?;
            merge(&mut slot.vm_id, entry.vm_id, name, "vm_id")?;
            merge(&mut slot.vswitch_id, entry.vswitch_id, name, "vswitch_id")?;
            merge(&mut slot.vpc_id, entry.vpc_id, name, "vpc_id")?;
        }
        for name in &args.interfaces {
            check_ifname(name, "--interface")?;
            if !pending.iter().any(|p| &p.name == name) {
                pending.push(Pending {
                    name: name.clone(),
                    ..Pending::default()
                });
            }
        }
        for value in &args.eni_ids {
            let (interface, eni_id) = value
                .split_once('=')
                .filter(|(i, e)| !i.is_empty() && !e.is_empty())
                .ok_or_else(|| ConfigError::EniIdSyntax {
                    value: value.clone(),
                })?;
            let Some(slot) = pending.iter_mut().find(|p| p.name == interface) else {
                return Err(ConfigError::EniIdForUnselectedInterface {
                    interface: interface.to_owned(),
                    eni_id: eni_id.to_owned(),
                });
            };
            merge(
                &mut slot.flag_eni_id,
                Some(eni_id.to_owned()),
                interface,
                "--eni-id",
            )?;
        }

        let node = &file.metadata;
        let account_id = pick(args.account_id.as_deref(), None, node.account_id.as_deref());
        let mut interfaces: Vec<InterfaceConfig> = Vec::with_capacity(pending.len());
        for p in pending {
            let ifindex = resolve(&p.name).ok_or_else(|| ConfigError::UnknownInterface {
                name: p.name.clone(),
            })?;
            if let Some(other) = interfaces.iter().find(|i| i.ifindex == ifindex) {
                return Err(ConfigError::SameDevice {
                    first: other.name.clone(),
                    second: p.name,
                    ifindex,
                });
            }
            let meta = InterfaceMeta {
                eni_id: p.flag_eni_id.or(p.eni_id).unwrap_or_else(|| p.name.clone()),
                account_id: account_id.clone(),
                vm_id: pick(
                    args.vm_id.as_deref(),
                    p.vm_id.as_deref(),
                    node.vm_id.as_deref(),
                ),
                vswitch_id: pick(
                    args.vswitch_id.as_deref(),
                    p.vswitch_id.as_deref(),
                    node.vswitch_id.as_deref(),
                ),
                vpc_id: pick(
                    args.vpc_id.as_deref(),
                    p.vpc_id.as_deref(),
                    node.vpc_id.as_deref(),
                ),
            };
            interfaces.push(InterfaceConfig {
                name: p.name,
                ifindex,
                meta,
            });
        }

        let policy = match args.policy.as_ref().or(file.policy.as_ref()) {
            Some(path) => {
                let policy = Policy::load(path).map_err(|e| ConfigError::Policy(Box::new(e)))?;
                // With flow logs (or as a daemon), interfaces come and go: the rule sets
                // bind to whatever the names designate when they are captured.
                if file.flow_log.is_empty() && !interfaces.is_empty() {
                    check_policy_interfaces(&policy, &interfaces)?;
                }
                Some((path.clone(), policy))
            }
            None => None,
        };

        let metrics_address = match (&args.metrics_address, &file.metrics_address) {
            (Some(v), _) => Some(parse_metrics_address("--metrics-address", v)?),
            (None, Some(v)) => Some(parse_metrics_address("metrics_address", v)?),
            (None, None) => None,
        };

        let kubernetes = kube_settings(args, &file.kubernetes, |k| std::env::var(k).ok())?;

        let paths = file
            .paths
            .as_ref()
            .map(crate::paths::Paths::compile)
            .transpose()?;
        let sink_names: Vec<String> = file.sink_defs.iter().map(|d| d.name.clone()).collect();
        for f in &file.flow_log {
            // Syntax and references now; interfaces and bridges when the agent starts.
            let checks = crate::instance::Checks {
                interface_exists: None,
                bridge_exists: &|_| true,
                paths_configured: paths.is_some(),
                sinks: &sink_names,
            };
            crate::instance::FlowLogSpec::validate(f, &checks).map_err(|source| {
                ConfigError::FlowLog {
                    name: f.name.clone(),
                    source,
                }
            })?;
        }
        // `flowlog run --interface X` alone is self-contained: no socket, no saved
        // instances, unless asked for.
        let daemon = interfaces.is_empty() || !file.flow_log.is_empty();
        let socket =
            args.socket.clone().or(file.socket.clone()).or_else(|| {
                daemon.then(|| PathBuf::from(crate::instance::control::DEFAULT_SOCKET))
            });
        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir.clone())
            .or_else(|| daemon.then(|| PathBuf::from(DEFAULT_STATE_DIR)));
        let pin_dir = args.pin_dir.clone().or(file.pin_dir.clone()).or_else(|| {
            let default = Path::new(DEFAULT_PIN_DIR);
            (daemon && crate::pin::on_bpffs(default)).then(|| default.to_owned())
        });
        let node_meta = InterfaceMeta {
            eni_id: String::new(),
            account_id: account_id.clone(),
            vm_id: pick(args.vm_id.as_deref(), None, node.vm_id.as_deref()),
            vswitch_id: pick(args.vswitch_id.as_deref(), None, node.vswitch_id.as_deref()),
            vpc_id: pick(args.vpc_id.as_deref(), None, node.vpc_id.as_deref()),
        };

        Ok(Config {
            interfaces,
            window,
            mode: args.mode.or(file.mode).unwrap_or_default(),
            xdp_attach: args.xdp_attach.or(file.xdp_attach).unwrap_or_default(),
            max_flows,
            output,
            policy,
            transfer_type: args
                .transfer_type
                .or(file.transfer_type)
                .unwrap_or_default(),
            record_format: args
                .record_format
                .or(file.record_format)
                .unwrap_or_default(),
            metrics_address,
            kubernetes,
            sinks,
            output_explicit,
            agent_id,
            flow_logs: file.flow_log.clone(),
            sink_defs,
            paths,
            socket,
            socket_group: file.socket_group.clone(),
            state_dir,
            pin_dir,
            cleanup: args.cleanup,
            max_flow_logs: file
                .max_flow_logs
                .unwrap_or(crate::instance::DEFAULT_MAX_FLOW_LOGS),
            node_meta,
        })
    }
}

/// The sinks named by `--sink` (or the file's `sinks`), from the `[[sink]]` tables.
fn select_sinks(
    args: &RunArgs,
    file: &FileConfig,
) -> Result<(Vec<SinkConfig>, Vec<SinkConfig>), ConfigError> {
    let mut defs = Vec::new();
    for d in &file.sink_defs {
        if d.name.is_empty() {
            return Err(ConfigError::BadSink {
                name: d.name.clone(),
                problem: "name is empty".into(),
            });
        }
        if file.sink_defs.iter().filter(|o| o.name == d.name).count() > 1 {
            return Err(ConfigError::BadSink {
                name: d.name.clone(),
                problem: "defined twice".into(),
            });
        }
        defs.push(sink_config(d)?);
    }
    let (names, field) = if args.sinks.is_empty() {
        (&file.sinks, "config file sinks")
    } else {
        (&args.sinks, "--sink")
    };
    let mut out: Vec<SinkConfig> = Vec::new();
    for name in names {
        let Some(def) = defs.iter().find(|d| &d.name == name) else {
            let defined = defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>();
            return Err(ConfigError::UnknownSink {
                field,
                name: name.clone(),
                defined: if defined.is_empty() {
                    "none".into()
                } else {
                    defined.join(", ")
                },
            });
        };
        if !out.iter().any(|o| o.name == def.name) {
            out.push(def.clone());
        }
    }
    Ok((out, defs))
}

fn sink_config(d: &FileSink) -> Result<SinkConfig, ConfigError> {
    use crate::sink::file::DirSettings;
    let bad = |problem: String| ConfigError::BadSink {
        name: d.name.clone(),
        problem,
    };
    let text = match d.format.as_deref() {
        None | Some("json") => {
            if d.fields.is_some() {
                return Err(bad("fields is for format = \"text\"".into()));
            }
            None
        }
        Some("text") => {
            let mut t = crate::sink::text::TextFormat::default();
            if let Some(fields) = &d.fields {
                if fields.is_empty() || fields.iter().any(|f| f.is_empty() || f.contains(' ')) {
                    return Err(bad(
                        "fields must name at least one field, without spaces".into()
                    ));
                }
                t.fields = fields.clone();
            }
            Some(t)
        }
        Some(f) => {
            return Err(bad(format!(
                "format {f:?} is not available: use json or text"
            )))
        }
    };
    let dur = |key: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(text) => parse_duration(text).ok_or_else(|| {
            bad(format!(
                "{key} = {text:?} is not a duration: use 90s, 30m, 1h or 7d"
            ))
        }),
    };
    let size = |key: &str, v: &Option<Size>| -> Result<Option<u64>, ConfigError> {
        match v {
            None => Ok(None),
            Some(Size::Bytes(n)) => Ok(Some(*n)),
            Some(Size::Text(t)) => parse_size(t)
                .map(Some)
                .map_err(|problem| bad(format!("{key}: {problem}"))),
        }
    };
    let rotate_bytes = size("rotate_bytes", &d.rotate_bytes)?;
    let retention_bytes = size("retention_bytes", &d.retention_bytes)?;
    let spool_max_bytes = size("spool_max_bytes", &d.spool_max_bytes)?;
    // Keys given that the type does not take.
    let refuse = |kind: &str, keys: &[(&str, bool)]| -> Result<(), ConfigError> {
        let given: Vec<&str> = keys
            .iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect();
        if given.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "type {kind} does not take {}",
                given.join(", ")
            )))
        }
    };
    let network = [
        ("address", d.address.is_some()),
        ("spool_dir", d.spool_dir.is_some()),
        ("spool_max_bytes", d.spool_max_bytes.is_some()),
    ];
    let rotation = [
        ("rotate_bytes", d.rotate_bytes.is_some()),
        ("rotate_after", d.rotate_after.is_some()),
    ];
    let retention_keys = [("retention_bytes", d.retention_bytes.is_some())];
    let parquet_keys = [("windows_per_file", d.windows_per_file.is_some())];
    let ipfix_keys = [
        ("transport", d.transport.is_some()),
        ("template_refresh", d.template_refresh.is_some()),
        ("mtu", d.mtu.is_some()),
        ("observation_domain", d.observation_domain.is_some()),
        ("enterprise_number", d.enterprise_number.is_some()),
    ];
    let kafka_keys = [
        ("brokers", d.brokers.is_some()),
        ("topic", d.topic.is_some()),
        ("compression", d.compression.is_some()),
    ];
    // Network sinks: where the spool lives and its bound.
    let spool_settings = || -> Result<crate::sink::spool::SpoolSettings, ConfigError> {
        use crate::sink::spool::{SpoolSettings, DEFAULT_DIR, DEFAULT_MAX_BYTES};
        let max_bytes = spool_max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 {
            return Err(bad("spool_max_bytes must be at least 1".into()));
        }
        let dir = match &d.spool_dir {
            Some(p) if p.as_os_str().is_empty() => return Err(bad("spool_dir is empty".into())),
            Some(p) => p.clone(),
            None => {
                if d.name.contains('/') || d.name.starts_with('.') {
                    return Err(bad(
                        "the default spool_dir is named after the sink: give spool_dir, or a name without '/' or a leading '.'".into(),
                    ));
                }
                PathBuf::from(DEFAULT_DIR).join(&d.name)
            }
        };
        Ok(SpoolSettings { dir, max_bytes })
    };
    let path_of = |kind: &str| {
        d.path
            .clone()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| bad(format!("type {kind} needs path = \"DIRECTORY\"")))
    };
    let kind = match d.kind.as_str() {
        "stdout" => {
            if d.path.is_some() || d.rotate_bytes.is_some() || d.rotate_after.is_some() {
                return Err(bad("type stdout takes no path or rotation".into()));
            }
            refuse("stdout", &network)?;
            refuse("stdout", &retention_keys)?;
            refuse("stdout", &ipfix_keys)?;
            refuse("stdout", &kafka_keys)?;
            refuse("stdout", &parquet_keys)?;
            SinkKind::Stdout
        }
        "file" => {
            let dir = path_of("file")?;
            refuse("file", &network)?;
            refuse("file", &ipfix_keys)?;
            refuse("file", &kafka_keys)?;
            refuse("file", &parquet_keys)?;
            let rotate_bytes = rotate_bytes.unwrap_or(DirSettings::DEFAULT_ROTATE_BYTES);
            if rotate_bytes == 0 {
                return Err(bad("rotate_bytes must be at least 1".into()));
            }
            SinkKind::File(DirSettings {
                dir,
                rotate_bytes,
                rotate_after: dur(
                    "rotate_after",
                    &d.rotate_after,
                    DirSettings::DEFAULT_ROTATE_AFTER,
                )?,
                retention: dur("retention", &d.retention, DirSettings::DEFAULT_RETENTION)?,
                retention_bytes,
                text: text.clone(),
            })
        }
        "parquet" => {
            use crate::sink::parquet::ParquetSettings;
            let dir = path_of("parquet")?;
            refuse("parquet", &network)?;
            refuse("parquet", &ipfix_keys)?;
            refuse("parquet", &kafka_keys)?;
            refuse("parquet", &rotation)?;
            if d.format.is_some() {
                return Err(bad(
                    "type parquet is its own format: remove format (and fields)".into(),
                ));
            }
            let windows_per_file = d.windows_per_file.unwrap_or(1);
            if windows_per_file == 0 {
                return Err(bad("windows_per_file must be at least 1".into()));
            }
            SinkKind::Parquet(ParquetSettings {
                dir,
                windows_per_file,
                retention: dur(
                    "retention",
                    &d.retention,
                    ParquetSettings::DEFAULT_RETENTION,
                )?,
                retention_bytes,
            })
        }
        "tcp" => {
            refuse("tcp", &rotation)?;
            refuse("tcp", &retention_keys)?;
            refuse("tcp", &parquet_keys)?;
            refuse("tcp", &ipfix_keys)?;
            refuse("tcp", &kafka_keys)?;
            refuse(
                "tcp",
                &[
                    ("path", d.path.is_some()),
                    ("retention", d.retention.is_some()),
                ],
            )?;
            let address = d
                .address
                .clone()
                .ok_or_else(|| bad("type tcp needs address = \"HOST:PORT\"".into()))?;
            check_address(&address)
                .map_err(|why| bad(format!("address = {address:?} is not HOST:PORT: {why}")))?;
            SinkKind::Tcp {
                address,
                spool: spool_settings()?,
            }
        }
        "ipfix" => {
            use crate::sink::ipfix::{IpfixSettings, Transport};
            refuse("ipfix", &rotation)?;
            refuse("ipfix", &retention_keys)?;
            refuse("ipfix", &parquet_keys)?;
            refuse("ipfix", &kafka_keys)?;
            refuse(
                "ipfix",
                &[
                    ("path", d.path.is_some()),
                    ("retention", d.retention.is_some()),
                ],
            )?;
            if d.format.is_some() {
                return Err(bad(
                    "type ipfix is its own format: remove format (and fields)".into(),
                ));
            }
            let address = d
                .address
                .clone()
                .ok_or_else(|| bad("type ipfix needs address = \"HOST:PORT\"".into()))?;
            check_address(&address)
                .map_err(|why| bad(format!("address = {address:?} is not HOST:PORT: {why}")))?;
            let transport = match d.transport.as_deref() {
                None | Some("udp") => Transport::Udp,
                Some("tcp") => Transport::Tcp,
                Some(t) => {
                    return Err(bad(format!(
                        "transport = {t:?} is not available: use udp or tcp"
                    )))
                }
            };
            if transport == Transport::Tcp && d.template_refresh.is_some() {
                return Err(bad(
                    "template_refresh is for transport = \"udp\" (over TCP the templates go once per connection)".into(),
                ));
            }
            let template_refresh = dur(
                "template_refresh",
                &d.template_refresh,
                IpfixSettings::DEFAULT_TEMPLATE_REFRESH,
            )?;
            if template_refresh.is_zero() {
                return Err(bad("template_refresh must be at least 1s".into()));
            }
            let mtu = d.mtu.unwrap_or(IpfixSettings::DEFAULT_MTU);
            if !(IpfixSettings::MIN_MTU..=IpfixSettings::MAX_MTU).contains(&mtu) {
                return Err(bad(format!(
                    "mtu = {mtu} is out of range: use {} to {}",
                    IpfixSettings::MIN_MTU,
                    IpfixSettings::MAX_MTU
                )));
            }
            let enterprise_number = d
                .enterprise_number
                .unwrap_or(IpfixSettings::DEFAULT_ENTERPRISE_NUMBER);
            if enterprise_number == 0 {
                return Err(bad(
                    "enterprise_number 0 is IANA's own (reserved): use your organization's private enterprise number".into(),
                ));
            }
            SinkKind::Ipfix {
                settings: IpfixSettings {
                    address,
                    transport,
                    template_refresh,
                    mtu,
                    observation_domain: d.observation_domain.unwrap_or(0),
                    enterprise_number,
                },
                spool: spool_settings()?,
            }
        }
        "kafka" => {
            use crate::sink::kafka::{Compression, KafkaSettings};
            refuse("kafka", &rotation)?;
            refuse("kafka", &retention_keys)?;
            refuse("kafka", &parquet_keys)?;
            refuse("kafka", &ipfix_keys)?;
            refuse(
                "kafka",
                &[
                    ("path", d.path.is_some()),
                    ("retention", d.retention.is_some()),
                    ("address", d.address.is_some()),
                ],
            )?;
            let brokers = d.brokers.clone().unwrap_or_default();
            if brokers.is_empty() {
                return Err(bad("type kafka needs brokers = [\"HOST:PORT\", ...]".into()));
            }
            for b in &brokers {
                check_address(b)
                    .map_err(|why| bad(format!("broker {b:?} is not HOST:PORT: {why}")))?;
            }
            let topic = d
                .topic
                .clone()
                .ok_or_else(|| bad("type kafka needs topic = \"NAME\"".into()))?;
            crate::sink::kafka::check_topic(&topic).map_err(|why| {
                bad(format!(
                    "topic = {topic:?} is not a Kafka topic name: {why}"
                ))
            })?;
            let compression = match d.compression.as_deref() {
                None | Some("lz4") => Compression::Lz4,
                Some("zstd") => Compression::Zstd,
                Some("none") => Compression::None,
                Some(c) => {
                    return Err(bad(format!(
                        "compression = {c:?} is not available: use lz4, zstd or none"
                    )))
                }
            };
            SinkKind::Kafka {
                settings: KafkaSettings {
                    brokers,
                    topic,
                    compression,
                },
                spool: spool_settings()?,
            }
        }
        other => {
            return Err(bad(format!(
                "unknown type {other:?}: use stdout, file, parquet, tcp, ipfix or kafka"
            )))
        }
    };
    Ok(SinkConfig {
        name: d.name.clone(),
        kind,
        text,
    })
}

/// `host:port`, `[v6]:port`: a host (name or address) and a port 1-65535.
fn check_address(address: &str) -> Result<(), &'static str> {
    let (host, port) = address.rsplit_once(':').ok_or("no :PORT")?;
    let port: u16 = port
        .parse()
        .map_err(|_| "the port is not a number 1-65535")?;
    if port == 0 {
        return Err("the port is 0");
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Some(v6) = bracketed {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "not an IPv6 address in brackets");
    }
    if host.contains(':') {
        return Err("an IPv6 address goes in brackets: [::1]:9000");
    }
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("no host");
    }
    Ok(())
}

/// `90s`, `30m`, `1h`, `7d` (a whole number and one unit).
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Whether and how to watch pods; `env` reads the environment (tests pass their own).
fn kube_settings(
    args: &RunArgs,
    file: &FileKubernetes,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<KubeSettings>, ConfigError> {
    let (mode, field) = match (args.kubernetes, file.mode) {
        (Some(m), _) => (m, "--kubernetes"),
        (None, Some(m)) => (m, "kubernetes.mode"),
        (None, None) => (KubernetesMode::Auto, "--kubernetes"),
    };
    let kubeconfig = args.kubeconfig.clone().or_else(|| file.kubeconfig.clone());
    let built = cfg!(feature = "kubernetes");
    let on = match mode {
        KubernetesMode::Off => false,
        KubernetesMode::On => true,
        KubernetesMode::Auto => {
            built && (kubeconfig.is_some() || env("KUBERNETES_SERVICE_HOST").is_some())
        }
    };
    if !on {
        return Ok(None);
    }
    if !built {
        return Err(ConfigError::KubernetesNotBuilt { field });
    }
    let mut labels = file.labels.clone();
    for l in &args.pod_labels {
        if !labels.contains(l) {
            labels.push(l.clone());
        }
    }
    if let Some(bad) = labels
        .iter()
        .find(|l| l.is_empty() || l.len() > 317 || l.chars().any(|c| c.is_whitespace() || c == '"'))
    {
        return Err(ConfigError::PodLabel {
            field: "--pod-label",
            value: bad.clone(),
        });
    }
    let node_name = file
        .node_name
        .clone()
        .or_else(|| env("NODE_NAME"))
        .or_else(hostname)
        .unwrap_or_else(|| "-".into());
    Ok(Some(KubeSettings {
        kubeconfig,
        labels,
        node_name,
    }))
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// `HOST:PORT`, or `:PORT` for loopback.
fn parse_metrics_address(field: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.trim();
    let full = match text.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_string(),
    };
    full.parse().map_err(|_| ConfigError::MetricsAddress {
        field,
        value: value.to_string(),
    })
}

/// Every interface a rule set names must be one the agent captures on.
pub fn check_policy_interfaces(
    policy: &Policy,
    interfaces: &[InterfaceConfig],
) -> Result<(), ConfigError> {
    for (iface, set) in policy.interfaces() {
        if !interfaces.iter().any(|i| i.name == iface) {
            return Err(ConfigError::PolicyInterface {
                interface: iface.to_owned(),
                set: set.to_owned(),
            });
        }
    }
    Ok(())
}

fn check_max_flows(value: u64, field: &'static str) -> Result<u32, ConfigError> {
    u32::try_from(value)
        .ok()
        .filter(|v| (1..=MAX_FLOWS_LIMIT).contains(v))
        .ok_or(ConfigError::MaxFlows { field, value })
}

fn output_from(path: &Path, field: &'static str) -> Result<Output, ConfigError> {
    if path.as_os_str().is_empty() {
        Err(ConfigError::EmptyOutput { field })
    } else if path.as_os_str() == "-" {
        Ok(Output::Stdout)
    } else {
        Ok(Output::File(path.to_owned()))
    }
}

/// The kernel's `dev_valid_name` rules, plus no control characters (a NUL could not
/// reach `if_nametoindex`).
pub(crate) fn check_ifname(name: &str, field: &'static str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::InterfaceNameEmpty { field });
    }
    if name.len() > IFNAME_MAX_LEN {
        return Err(ConfigError::InterfaceNameTooLong {
            field,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let bad = name
        .chars()
        .find(|c| matches!(c, '/' | ':') || c.is_whitespace() || c.is_control());
    let bad = bad.or_else(|| matches!(name, "." | "..").then_some('.'));
    match bad {
        Some(found) => Err(ConfigError::InterfaceNameInvalid {
            field,
            name: name.to_owned(),
            found,
        }),
        None => Ok(()),
    }
}

/// Fills `slot` with `new`; two different values for one interface are an error.
fn merge(
    slot: &mut Option<String>,
    new: Option<String>,
    interface: &str,
    field: &'static str,
) -> Result<(), ConfigError> {
    match (slot.as_ref(), new) {
        (_, None) => Ok(()),
        (None, new) => {
            *slot = new;
            Ok(())
        }
        (Some(first), Some(second)) if *first == second => Ok(()),
        (Some(first), Some(second)) => Err(ConfigError::Conflict {
            interface: interface.to_owned(),
            field,
            first: first.clone(),
            second,
        }),
    }
}

/// A metadata value: the flag if given, else the per-interface value, else the
/// node-wide one; an empty string is explicitly unset.
fn pick(flag: Option<&str>, per_interface: Option<&str>, node: Option<&str>) -> Option<String> {
    let v = flag.or(per_interface).or(node)?;
    (!v.is_empty()).then(|| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const FULL: &str = r#"
window = "5m"
mode = "xdp"
xdp_attach = "native"
max_flows = 1000
output = "/var/log/flowlog/flows.jsonl"

[metadata]
account_id = "1210123456"
vm_id = "i-1"
vswitch_id = "vsw-1"
vpc_id = "vpc-1"

[[interfaces]]
name = "eth0"
eni_id = "eni-bp166tg9uk1ryf"

[[interfaces]]
name = "eth1"
vm_id = "i-2"
vpc_id = ""
"#;

    fn resolver(name: &str) -> Option<u32> {
        match name {
            "lo" => Some(1),
            "eth0" => Some(2),
            "eth1" => Some(3),
            "br0" => Some(4),
            "eth0-alt" => Some(2),
            _ => None,
        }
    }

    fn run(argv: &[&str]) -> RunArgs {
        let mut full = vec!["flowlog", "run"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Run(args) => args,
            other => panic!("not `run`: {other:?}"),
        }
    }

    #[test]
    fn query_and_report_pass_everything_through() {
        let cli =
            Cli::try_parse_from(["flowlog", "query", "--logs", "a", "--help", "* | x"]).unwrap();
        let Command::Query(q) = cli.command else {
            panic!("not query")
        };
        assert_eq!(q.args, ["--logs", "a", "--help", "* | x"]);
        let cli = Cli::try_parse_from(["flowlog", "report"]).unwrap();
        assert!(matches!(cli.command, Command::Report(PassThrough { args }) if args.is_empty()));
    }

    #[test]
    fn kubernetes_is_on_in_a_cluster_or_with_a_kubeconfig() {
        let none = |_: &str| None;
        let cluster = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.0.0.1".to_string());
        let f = FileKubernetes::default();
        assert_eq!(
            kube_settings(&run(&["-i", "eth0"]), &f, none).unwrap(),
            None
        );
        let off = run(&["-i", "eth0", "--kubernetes", "off"]);
        assert_eq!(kube_settings(&off, &f, cluster).unwrap(), None);
        let auto = kube_settings(
            &run(&["-i", "eth0", "--pod-label", "app"]),
            &f,
            |k: &str| match k {
                "KUBERNETES_SERVICE_HOST" => Some("10.0.0.1".into()),
                "NODE_NAME" => Some("node-7".into()),
                _ => None,
            },
        );
        let on = kube_settings(&run(&["-i", "eth0", "--kubernetes", "on"]), &f, none);
        if cfg!(feature = "kubernetes") {
            let s = auto.unwrap().expect("on inside a cluster");
            assert_eq!(
                (s.labels, s.node_name),
                (vec!["app".to_string()], "node-7".to_string())
            );
            assert!(on.unwrap().is_some());
        } else {
            assert_eq!(auto.unwrap(), None, "auto stays off without the feature");
            let e = on.unwrap_err();
            assert_eq!(e.exit_code(), EXIT_USAGE);
            assert!(
                e.to_string().contains("--kubernetes: pod metadata needs"),
                "{e}"
            );
        }
        let bad = kube_settings(
            &run(&["-i", "eth0", "--kubernetes", "on", "--pod-label", "a b"]),
            &f,
            none,
        );
        if cfg!(feature = "kubernetes") {
            assert!(bad
                .unwrap_err()
                .to_string()
                .contains("\"a b\" is not a label key"));
        }
        // The file's [kubernetes] table: unknown keys are refused.
        let text = "[kubernetes]\nmode = \"on\"\nlabels = [\"app\"]\nnode_name = \"n\"\n";
        assert_eq!(file(text).kubernetes.labels, ["app"]);
        assert!(parse_file("[kubernetes]\nlabel = 1\n", Path::new("t.toml")).is_err());
    }

    #[test]
    fn sizes_with_units() {
        for (text, bytes) in [
            ("0", 0),
            ("4096", 4096),
            ("10B", 10),
            ("128MiB", 128 << 20),
            ("128 MiB", 128 << 20),
            ("2Gi", 2 << 30),
            ("1TiB", 1 << 40),
            ("3KiB", 3 << 10),
            ("500MB", 500_000_000),
            ("1kB", 1000),
            ("2KB", 2000),
            ("10GB", 10_000_000_000),
            (" 7TB ", 7_000_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "1.5GiB",
            "-1",
            "10 gigs",
            "1M",
            "1k",
            "99999999999TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sinks_by_name() {
        let text = "[[sink]]\nname = \"archive\"\ntype = \"file\"\npath = \"/var/log/fl\"\nrotate_bytes = 1000\nrotate_after = \"30m\"\nretention = \"2d\"\nretention_bytes = 5000\n\n[[sink]]\nname = \"console\"\ntype = \"stdout\"\n";
        let c = build(&["-i", "eth0", "--sink", "archive"], Some(text)).unwrap();
        assert_eq!(c.sinks.len(), 1);
        let SinkKind::File(d) = &c.sinks[0].kind else {
            panic!("not a file sink")
        };
        assert_eq!(
            (
                d.rotate_bytes,
                d.rotate_after,
                d.retention,
                d.retention_bytes
            ),
            (
                1000,
                Duration::from_secs(1800),
                Duration::from_secs(172_800),
                Some(5000)
            )
        );
        assert!(!c.output_explicit);
        let c = build(
            &[
                "-i", "eth0", "--sink", "console", "--sink", "archive", "--output", "-",
            ],
            Some(text),
        )
        .unwrap();
        assert_eq!(
            c.sinks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["console", "archive"]
        );
        assert!(c.output_explicit);
        // The file's own selection.
        let c = build(
            &["-i", "eth0"],
            Some(&format!("sinks = [\"console\"]\n{text}")),
        )
        .unwrap();
        assert_eq!(c.sinks[0].kind, SinkKind::Stdout);

        let e = build(&["-i", "eth0", "--sink", "nope"], Some(text)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--sink: no [[sink]] named \"nope\" in the config file (defined: archive, console)"
        );
        assert_eq!(e.exit_code(), EXIT_USAGE);
        for (def, problem) in [
            (
                "name = \"k\"\ntype = \"kafka\"",
                "type kafka needs brokers = [\"HOST:PORT\", ...]",
            ),
            ("name = \"x\"\ntype = \"ftp\"", "unknown type \"ftp\""),
            ("name = \"f\"\ntype = \"file\"", "type file needs path"),
            (
                "name = \"f\"\ntype = \"file\"\npath = \"/d\"\nretention = \"7 days\"",
                "retention = \"7 days\" is not a duration",
            ),
            (
                "name = \"f\"\ntype = \"file\"\npath = \"/d\"\nformat = \"csv\"",
                "format \"csv\" is not available",
            ),
        ] {
            let e = build(&["-i", "eth0"], Some(&format!("[[sink]]\n{def}\n"))).unwrap_err();
            assert!(e.to_string().contains(problem), "{e}");
        }
        let twice = "[[sink]]\nname = \"a\"\ntype = \"stdout\"\n[[sink]]\nname = \"a\"\ntype = \"stdout\"\n";
        assert!(build(&["-i", "eth0"], Some(twice))
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
        assert!(parse_file(
            "[[sink]]\nname = \"a\"\ntype = \"stdout\"\nspool = 1\n",
            Path::new("t")
        )
        .is_err());
    }

    #[test]
    fn ipfix_and_kafka_sinks() {
        use crate::sink::{
            ipfix::{IpfixSettings, Transport},
            kafka::{Compression, KafkaSettings},
            spool::SpoolSettings,
        };
        let text = "[[sink]]\nname = \"nf\"\ntype = \"ipfix\"\naddress = \"127.0.0.1:2055\"\n\n[[sink]]\nname = \"nft\"\ntype = \"ipfix\"\naddress = \"[::1]:4739\"\ntransport = \"tcp\"\nmtu = 9000\nobservation_domain = 42\nenterprise_number = 99\nspool_dir = \"/tmp/s\"\n\n[[sink]]\nname = \"bus\"\ntype = \"kafka\"\nbrokers = [\"k1:9092\", \"k2:9092\"]\ntopic = \"flow-logs\"\ncompression = \"zstd\"\nformat = \"text\"\n";
        let c = build(
            &[
                "-i", "eth0", "--sink", "nf", "--sink", "nft", "--sink", "bus",
            ],
            Some(text),
        )
        .unwrap();
        assert_eq!(
            c.sinks[0].kind,
            SinkKind::Ipfix {
                settings: IpfixSettings {
                    address: "127.0.0.1:2055".into(),
                    transport: Transport::Udp,
                    template_refresh: Duration::from_secs(60),
                    mtu: 1500,
                    observation_domain: 0,
                    enterprise_number: 32473,
                },
                spool: SpoolSettings {
                    dir: "/var/lib/flowlog/spool/nf".into(),
                    max_bytes: 256 * 1024 * 1024,
                },
            }
        );
        assert_eq!(
            c.sinks[1].kind,
            SinkKind::Ipfix {
                settings: IpfixSettings {
                    address: "[::1]:4739".into(),
                    transport: Transport::Tcp,
                    template_refresh: Duration::from_secs(60),
                    mtu: 9000,
                    observation_domain: 42,
                    enterprise_number: 99,
                },
                spool: SpoolSettings {
                    dir: "/tmp/s".into(),
                    max_bytes: 256 * 1024 * 1024,
                },
            }
        );
        assert_eq!(
            c.sinks[2].kind,
            SinkKind::Kafka {
                settings: KafkaSettings {
                    brokers: vec!["k1:9092".into(), "k2:9092".into()],
                    topic: "flow-logs".into(),
                    compression: Compression::Zstd,
                },
                spool: SpoolSettings {
                    dir: "/var/lib/flowlog/spool/bus".into(),
                    max_bytes: 256 * 1024 * 1024,
                },
            }
        );
        assert!(c.sinks[2].text.is_some());
        let ipfix = "name = \"i\"\ntype = \"ipfix\"\naddress = \"h:1\"\n";
        let kafka = "name = \"k\"\ntype = \"kafka\"\nbrokers = [\"h:1\"]\ntopic = \"t\"\n";
        for (def, problem) in [
            (
                format!("{ipfix}transport = \"sctp\""),
                "transport = \"sctp\" is not available: use udp or tcp",
            ),
            (
                format!("{ipfix}transport = \"tcp\"\ntemplate_refresh = \"30s\""),
                "template_refresh is for transport = \"udp\"",
            ),
            (
                format!("{ipfix}template_refresh = \"soon\""),
                "template_refresh = \"soon\" is not a duration",
            ),
            (
                format!("{ipfix}mtu = 576"),
                "mtu = 576 is out of range: use 1280 to 65535",
            ),
            (
                format!("{ipfix}enterprise_number = 0"),
                "enterprise_number 0 is IANA's own",
            ),
            (
                format!("{ipfix}format = \"text\""),
                "type ipfix is its own format",
            ),
            (
                format!("{ipfix}topic = \"t\""),
                "type ipfix does not take topic",
            ),
            (
                "name = \"i\"\ntype = \"ipfix\"\naddress = \"h\"".into(),
                "address = \"h\" is not HOST:PORT: no :PORT",
            ),
            (
                "name = \"k\"\ntype = \"kafka\"\nbrokers = []\ntopic = \"t\"".into(),
                "type kafka needs brokers",
            ),
            (
                "name = \"k\"\ntype = \"kafka\"\nbrokers = [\"h\"]\ntopic = \"t\"".into(),
                "broker \"h\" is not HOST:PORT: no :PORT",
            ),
            (
                "name = \"k\"\ntype = \"kafka\"\nbrokers = [\"h:1\"]".into(),
                "type kafka needs topic = \"NAME\"",
            ),
            (
                "name = \"k\"\ntype = \"kafka\"\nbrokers = [\"h:1\"]\ntopic = \"a b\"".into(),
                "topic = \"a b\" is not a Kafka topic name: only ASCII letters",
            ),
            (
                format!("{kafka}compression = \"gzip\""),
                "compression = \"gzip\" is not available: use lz4, zstd or none",
            ),
            (format!("{kafka}mtu = 1500"), "type kafka does not take mtu"),
            (
                format!("{kafka}address = \"h:1\""),
                "type kafka does not take address",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"h:1\"\nbrokers = [\"h:1\"]".into(),
                "type tcp does not take brokers",
            ),
            (
                "name = \"s\"\ntype = \"stdout\"\ntransport = \"udp\"".into(),
                "type stdout does not take transport",
            ),
            (
                "name = \"s\"\ntype = \"stdout\"\nretention_bytes = 10".into(),
                "type stdout does not take retention_bytes",
            ),
            (
                "name = \"f\"\ntype = \"file\"\npath = \"/x\"\nrotate_bytes = \"128M\"".into(),
                "rotate_bytes: \"128M\": say 128MiB (powers of 1024) or 128MB (powers of 1000)",
            ),
            (
                "name = \"f\"\ntype = \"file\"\npath = \"/x\"\nretention_bytes = \"10 gigs\""
                    .into(),
                "retention_bytes: \"10 gigs\": unknown unit \"gigs\"",
            ),
            (
                format!("{kafka}spool_max_bytes = \"lots\""),
                "spool_max_bytes: \"lots\" is not a size",
            ),
            (
                format!("{kafka}spool_max_bytes = \"0MiB\""),
                "spool_max_bytes must be at least 1",
            ),
        ] {
            let e = build(&["-i", "eth0"], Some(&format!("[[sink]]\n{def}\n"))).unwrap_err();
            assert!(e.to_string().contains(problem), "{e}\nwanted: {problem}");
            assert_eq!(e.exit_code(), EXIT_USAGE);
        }
    }

    #[test]
    fn parquet_and_tcp_sinks() {
        use crate::sink::{parquet::ParquetSettings, spool::SpoolSettings};
        let text = "[[sink]]\nname = \"lake\"\ntype = \"parquet\"\npath = \"/var/lib/fl/pq\"\nwindows_per_file = 5\nretention = \"2d\"\nretention_bytes = \"2 GiB\"\n\n[[sink]]\nname = \"collector\"\ntype = \"tcp\"\naddress = \"logs.example:9000\"\nformat = \"text\"\nspool_max_bytes = \"1MiB\"\n\n[[sink]]\nname = \"c2\"\ntype = \"tcp\"\naddress = \"[::1]:9000\"\nspool_dir = \"/tmp/sp\"\n";
        let c = build(
            &[
                "-i",
                "eth0",
                "--sink",
                "lake",
                "--sink",
                "collector",
                "--sink",
                "c2",
            ],
            Some(text),
        )
        .unwrap();
        assert_eq!(
            c.sinks[0].kind,
            SinkKind::Parquet(ParquetSettings {
                dir: "/var/lib/fl/pq".into(),
                windows_per_file: 5,
                retention: Duration::from_secs(172_800),
                retention_bytes: Some(2 << 30),
            })
        );
        assert_eq!(
            c.sinks[1].kind,
            SinkKind::Tcp {
                address: "logs.example:9000".into(),
                spool: SpoolSettings {
                    dir: "/var/lib/flowlog/spool/collector".into(),
                    max_bytes: 1_048_576,
                },
            }
        );
        assert!(c.sinks[1].text.is_some());
        assert_eq!(
            c.sinks[2].kind,
            SinkKind::Tcp {
                address: "[::1]:9000".into(),
                spool: SpoolSettings {
                    dir: "/tmp/sp".into(),
                    max_bytes: 256 * 1024 * 1024,
                },
            }
        );
        for (def, problem) in [
            (
                "name = \"t\"\ntype = \"tcp\"",
                "[[sink]] \"t\": type tcp needs address = \"HOST:PORT\"",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"host\"",
                "[[sink]] \"t\": address = \"host\" is not HOST:PORT: no :PORT",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"host:0\"",
                "address = \"host:0\" is not HOST:PORT: the port is 0",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"host:99999\"",
                "the port is not a number 1-65535",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"::1:9000\"",
                "an IPv6 address goes in brackets",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \":9000\"",
                "no host",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"h:1\"\nspool_max_bytes = 0",
                "[[sink]] \"t\": spool_max_bytes must be at least 1",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"h:1\"\nspool_dir = \"\"",
                "spool_dir is empty",
            ),
            (
                "name = \"a/b\"\ntype = \"tcp\"\naddress = \"h:1\"",
                "the default spool_dir is named after the sink",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"h:1\"\npath = \"/d\"",
                "type tcp does not take path",
            ),
            (
                "name = \"t\"\ntype = \"tcp\"\naddress = \"h:1\"\nrotate_bytes = 5",
                "type tcp does not take rotate_bytes",
            ),
            (
                "name = \"p\"\ntype = \"parquet\"",
                "[[sink]] \"p\": type parquet needs path = \"DIRECTORY\"",
            ),
            (
                "name = \"p\"\ntype = \"parquet\"\npath = \"/d\"\nwindows_per_file = 0",
                "windows_per_file must be at least 1",
            ),
            (
                "name = \"p\"\ntype = \"parquet\"\npath = \"/d\"\nformat = \"text\"",
                "type parquet is its own format",
            ),
            (
                "name = \"p\"\ntype = \"parquet\"\npath = \"/d\"\naddress = \"h:1\"\nspool_dir = \"/s\"",
                "type parquet does not take address, spool_dir",
            ),
            (
                "name = \"f\"\ntype = \"file\"\npath = \"/d\"\nspool_max_bytes = 5",
                "type file does not take spool_max_bytes",
            ),
            (
                "name = \"f\"\ntype = \"file\"\npath = \"/d\"\nwindows_per_file = 5",
                "type file does not take windows_per_file",
            ),
            (
                "name = \"s\"\ntype = \"stdout\"\naddress = \"h:1\"",
                "type stdout does not take address",
            ),
            (
                "name = \"i\"\ntype = \"ipfix\"",
                "type ipfix needs address = \"HOST:PORT\"",
            ),
        ] {
            let e = build(&["-i", "eth0"], Some(&format!("[[sink]]\n{def}\n"))).unwrap_err();
            assert!(e.to_string().contains(problem), "{e}\nwanted: {problem}");
            assert_eq!(e.exit_code(), EXIT_USAGE);
        }
        // A size is a number of bytes, or one with an unambiguous unit.
        let e = build(
            &["-i", "eth0"],
            Some("[[sink]]\nname = \"t\"\ntype = \"tcp\"\naddress = \"h:1\"\nspool_max_bytes = \"1G\"\n"),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("say 1GiB (powers of 1024) or 1GB"),
            "{e}"
        );
    }

    fn file(text: &str) -> FileConfig {
        parse_file(text, Path::new("test.toml")).unwrap()
    }

    fn build(argv: &[&str], text: Option<&str>) -> Result<Config, ConfigError> {
        Config::from_parts(&run(argv), text.map(file), resolver)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn full_example_file() {
        let c = build(&[], Some(FULL)).unwrap();
        assert_eq!(c.window, Duration::from_secs(300));
        assert_eq!(c.mode, Mode::Xdp);
        assert_eq!(c.xdp_attach, XdpAttach::Native);
        assert_eq!(c.max_flows, 1000);
        assert_eq!(
            c.output,
            Output::File("/var/log/flowlog/flows.jsonl".into())
        );
        assert_eq!(
            c.interfaces,
            vec![
                InterfaceConfig {
                    name: "eth0".into(),
                    ifindex: 2,
                    meta: InterfaceMeta {
                        eni_id: "eni-bp166tg9uk1ryf".into(),
                        account_id: Some("1210123456".into()),
                        vm_id: Some("i-1".into()),
                        vswitch_id: Some("vsw-1".into()),
                        vpc_id: Some("vpc-1".into()),
                    },
                },
                InterfaceConfig {
                    name: "eth1".into(),
                    ifindex: 3,
                    meta: InterfaceMeta {
                        eni_id: "eth1".into(),
                        account_id: Some("1210123456".into()),
                        vm_id: Some("i-2".into()),
                        vswitch_id: Some("vsw-1".into()),
                        vpc_id: None,
                    },
                },
            ]
        );
    }

    #[test]
    fn defaults() {
        let c = build(&["-i", "eth0"], None).unwrap();
        assert_eq!(c.window, DEFAULT_WINDOW);
        assert_eq!(c.window, Duration::from_secs(60));
        assert_eq!(c.mode, Mode::Tc);
        assert_eq!(c.xdp_attach, XdpAttach::Auto);
        assert_eq!(c.max_flows, 65_536);
        assert_eq!(c.output, Output::Stdout);
        assert_eq!(
            c.interfaces,
            vec![InterfaceConfig {
                name: "eth0".into(),
                ifindex: 2,
                meta: InterfaceMeta {
                    eni_id: "eth0".into(),
                    ..InterfaceMeta::default()
                },
            }]
        );
        // An empty file gives the same.
        assert_eq!(build(&["-i", "eth0"], Some("")).unwrap(), c);
    }

    #[test]
    fn flags_override_the_file() {
        let c = build(
            &[
                "--window",
                "10s",
                "--mode",
                "tc",
                "--xdp-attach",
                "generic",
                "--max-flows",
                "16777216",
                "--output",
                "-",
                "--account-id",
                "acct-2",
                "--vm-id",
                "i-9",
                "--vpc-id",
                "vpc-9",
                "--vswitch-id",
                "",
                "-i",
                "br0",
                "-i",
                "eth0",
                "--eni-id",
                "eth0=eni-flag",
                "--eni-id",
                "br0=eni-br",
            ],
            Some(FULL),
        )
        .unwrap();
        assert_eq!(c.window, Duration::from_secs(10));
        assert_eq!(c.mode, Mode::Tc);
        assert_eq!(c.xdp_attach, XdpAttach::Generic);
        assert_eq!(c.max_flows, MAX_FLOWS_LIMIT);
        assert_eq!(c.output, Output::Stdout);
        let names: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1", "br0"]);
        for i in &c.interfaces {
            assert_eq!(i.meta.account_id.as_deref(), Some("acct-2"));
            assert_eq!(i.meta.vm_id.as_deref(), Some("i-9"), "{}", i.name);
            assert_eq!(i.meta.vpc_id.as_deref(), Some("vpc-9"));
            assert_eq!(i.meta.vswitch_id, None, "empty flag unsets");
        }
        let eni: Vec<&str> = c
            .interfaces
            .iter()
            .map(|i| i.meta.eni_id.as_str())
            .collect();
        assert_eq!(eni, ["eni-flag", "eth1", "eni-br"]);
        assert_eq!(c.interfaces[2].ifindex, 4);
    }

    #[test]
    fn unknown_keys_are_rejected_naming_the_key() {
        for (text, key) in [
            ("windw = \"1m\"\n", "windw"),
            ("[metadata]\nzone = \"cn-hangzhou\"\n", "zone"),
            ("[[interfaces]]\nname = \"eth0\"\nmtu = 1500\n", "mtu"),
        ] {
            let e = parse_file(text, Path::new("/etc/flowlog.toml")).unwrap_err();
            assert!(matches!(e, ConfigError::Toml { .. }));
            let msg = e.to_string();
            assert!(msg.contains(key), "{msg}");
            assert!(msg.contains("/etc/flowlog.toml"), "{msg}");
            assert_eq!(e.exit_code(), 2);
        }
        let e = parse_file("mode = \"ebpf\"\n", Path::new("f.toml")).unwrap_err();
        assert!(e.to_string().contains("ebpf"), "{e}");
        let e = parse_file("[[interfaces]]\neni_id = \"x\"\n", Path::new("f.toml")).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn bad_windows_are_rejected_naming_the_source() {
        for w in ["0", "abc", "0m", "1h", "-5s", ""] {
            let e = build(&["-i", "eth0", "--window", w], None).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Window {
                        field: "--window",
                        ..
                    }
                ),
                "{e:?}"
            );
            let msg = e.to_string();
            assert!(msg.starts_with("--window: invalid window"), "{msg}");
            assert!(msg.contains("e.g. 10s, 1m, 5m, 10m"), "{msg}");
            let text = format!("window = {w:?}\n");
            let e = build(&["-i", "eth0"], Some(&text)).unwrap_err();
            assert!(
                matches!(
                    e,
                    ConfigError::Window {
                        field: "config file window",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        // A good flag wins over a bad file value (the file value is never used).
        let c = build(&["-i", "eth0", "--window", "1m"], Some("window = \"0\"\n")).unwrap();
        assert_eq!(c.window, Duration::from_secs(60));
    }

    #[test]
    fn interfaces_must_exist() {
        let e = build(&["-i", "eth9"], None).unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownInterface { name } if name == "eth9"));
        assert_eq!(
            e.to_string(),
            "interface \"eth9\" does not exist on this node (see `ip link`)"
        );
        // No interface: the daemon, waiting for flow logs on its control socket and
        // keeping them in the state directory.
        let c = build(&[], None).unwrap();
        assert!(c.interfaces.is_empty());
        assert_eq!(
            c.socket.as_deref(),
            Some(Path::new("/run/flowlog/flowlog.sock"))
        );
        assert_eq!(c.state_dir.as_deref(), Some(Path::new(DEFAULT_STATE_DIR)));
        // `--interface` alone is self-contained.
        let c = build(&["-i", "eth0"], None).unwrap();
        assert_eq!((c.socket, c.state_dir), (None, None));
        let c = build(&["-i", "eth0", "--socket", "/tmp/s"], None).unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/s")));
    }

    #[test]
    fn flow_logs_and_paths_in_the_file() {
        let text = r#"
max_flow_logs = 3
socket_group = "flowlog"
[[paths.role]]
name = "vpn"
interfaces = ["wg*"]
[[paths.rule]]
role = "vpn"
path = 9
[[flow_log]]
name = "vpn"
resource_type = "ENI"
resource_ids = ["wg0", "wg1"]
window = "1m"
traffic_path = "9"
"#;
        let c = build(&[], Some(text)).unwrap();
        assert_eq!(c.flow_logs.len(), 1);
        assert_eq!(c.max_flow_logs, 3);
        assert_eq!(c.paths.as_ref().unwrap().role_of("wg1"), 1);
        let bad = text.replace("traffic_path = \"9\"", "traffic_path = \"16\"");
        let e = build(&[], Some(&bad)).unwrap_err().to_string();
        assert!(
            e.starts_with("[[flow_log]] \"vpn\": traffic path \"16\""),
            "{e}"
        );
        let no_paths =
            "[[flow_log]]\nname = \"a\"\nresource_type = \"VPC\"\ntraffic_path = \"9\"\n";
        let e = build(&[], Some(no_paths)).unwrap_err().to_string();
        assert!(e.contains("this node classifies no paths"), "{e}");
    }

    #[test]
    fn interface_names_are_checked() {
        let e = build(&["-i", ""], None).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::InterfaceNameEmpty {
                field: "--interface"
            }
        ));
        let e = build(&["-i", "averyveryverylong0"], None).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::InterfaceNameTooLong { len: 18, .. }
        ));
        for (name, found) in [("eth0:1", ':'), ("a/b", '/'), ("a b", ' '), ("..", '.')] {
            let e = build(&["-i", name], None).unwrap_err();
            assert!(
                matches!(&e, ConfigError::InterfaceNameInvalid { found: f, .. } if *f == found),
                "{name}: {e:?}"
            );
        }
        let e = build(&[], Some("[[interfaces]]\nname = \"\"\n")).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::InterfaceNameEmpty {
                field: FIELD_FILE_IFNAME
            }
        ));
        // 15 bytes is the limit.
        let e = build(&["-i", "abcdefghijklmno"], None).unwrap_err();
        assert!(matches!(e, ConfigError::UnknownInterface { .. }));
    }

    #[test]
    fn duplicates_collapse_and_aliases_are_rejected() {
        let c = build(
            &["-i", "eth0", "-i", "eth0", "-i", "eth1"],
            Some("[[interfaces]]\nname = \"eth1\"\n[[interfaces]]\nname = \"eth1\"\neni_id = \"e\"\n"),
        )
        .unwrap();
        let names: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth1", "eth0"]);
        assert_eq!(c.interfaces[0].meta.eni_id, "e");

        let e = build(&["-i", "eth0", "-i", "eth0-alt"], None).unwrap_err();
        assert!(
            matches!(e, ConfigError::SameDevice { ifindex: 2, .. }),
            "{e:?}"
        );

        let e = build(
            &[],
            Some("[[interfaces]]\nname = \"eth1\"\neni_id = \"a\"\n[[interfaces]]\nname = \"eth1\"\neni_id = \"b\"\n"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::Conflict { field: "eni_id", first, second, .. } if first == "a" && second == "b"),
            "{e:?}"
        );
    }

    #[test]
    fn eni_id_mapping() {
        let c = build(
            &[
                "-i",
                "eth0",
                "-i",
                "eth1",
                "--eni-id",
                "eth1=eni-1",
                "--eni-id",
                "eth1=eni-1",
            ],
            None,
        )
        .unwrap();
        assert_eq!(c.interfaces[0].meta.eni_id, "eth0");
        assert_eq!(c.interfaces[1].meta.eni_id, "eni-1");
        // The value may itself contain '='.
        let c = build(&["-i", "eth0", "--eni-id", "eth0=a=b"], None).unwrap();
        assert_eq!(c.interfaces[0].meta.eni_id, "a=b");

        for bad in ["eth0", "=eni-1", "eth0=", ""] {
            let e = build(&["-i", "eth0", "--eni-id", bad], None).unwrap_err();
            assert!(
                matches!(&e, ConfigError::EniIdSyntax { value } if value == bad),
                "{bad}: {e:?}"
            );
        }
        let e = build(&["-i", "eth0", "--eni-id", "eth1=eni-1"], None).unwrap_err();
        assert!(matches!(
            &e,
            ConfigError::EniIdForUnselectedInterface { interface, eni_id }
                if interface == "eth1" && eni_id == "eni-1"
        ));
        assert!(e.to_string().contains("--interface eth1"), "{e}");
        let e = build(
            &["-i", "eth0", "--eni-id", "eth0=a", "--eni-id", "eth0=b"],
            None,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Conflict {
                field: "--eni-id",
                ..
            }
        ));
        let e = build(
            &[],
            Some("[[interfaces]]\nname = \"eth0\"\neni_id = \"\"\n"),
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::EmptyEniId { .. }));
    }

    #[test]
    fn xdp_mode() {
        let c = build(&["-i", "eth0", "--mode", "xdp"], None).unwrap();
        assert_eq!((c.mode, c.xdp_attach), (Mode::Xdp, XdpAttach::Auto));
        let c = build(
            &["-i", "eth0", "--mode", "xdp", "--xdp-attach", "generic"],
            None,
        )
        .unwrap();
        assert_eq!((c.mode, c.xdp_attach), (Mode::Xdp, XdpAttach::Generic));
        let c = build(
            &["-i", "eth0"],
            Some("mode = \"xdp\"\nxdp_attach = \"native\"\n"),
        )
        .unwrap();
        assert_eq!((c.mode, c.xdp_attach), (Mode::Xdp, XdpAttach::Native));
        assert!(Cli::try_parse_from(["flowlog", "run", "--mode", "bpf"]).is_err());
        assert_eq!(Mode::Xdp.to_string(), "xdp");
        assert_eq!(XdpAttach::Generic.to_string(), "generic");
    }

    #[test]
    fn max_flows_bounds() {
        for bad in ["0", "16777217", "4294967296", "18446744073709551615"] {
            let e = build(&["-i", "eth0", "--max-flows", bad], None).unwrap_err();
            assert!(
                matches!(e, ConfigError::MaxFlows { field: "--max-flows", value } if value.to_string() == bad),
                "{bad}: {e:?}"
            );
        }
        let e = build(&["-i", "eth0"], Some("max_flows = 0\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file max_flows: 0 is out of range"),
            "{e}"
        );
        assert!(parse_file("max_flows = -1\n", Path::new("f")).is_err());
        let c = build(&["-i", "eth0", "--max-flows", "1"], None).unwrap();
        assert_eq!(c.max_flows, 1);
    }

    #[test]
    fn output_paths() {
        let c = build(&["-i", "eth0", "--output", "flows.jsonl"], None).unwrap();
        assert_eq!(c.output, Output::File("flows.jsonl".into()));
        let c = build(&["-i", "eth0", "--output", "-"], Some("output = \"/x\"\n")).unwrap();
        assert_eq!(c.output, Output::Stdout);
        let c = build(&["-i", "eth0"], Some("output = \"-\"\n")).unwrap();
        assert_eq!(c.output, Output::Stdout);
        let e = build(&["-i", "eth0"], Some("output = \"\"\n")).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::EmptyOutput {
                field: "config file output"
            }
        ));
        // clap already rejects `--output ""`; a hand-built RunArgs is still checked.
        assert!(Cli::try_parse_from(["flowlog", "run", "--output", ""]).is_err());
        let mut args = run(&["-i", "eth0"]);
        args.output = Some(PathBuf::new());
        let e = Config::from_parts(&args, None, resolver).unwrap_err();
        assert!(matches!(e, ConfigError::EmptyOutput { field: "--output" }));
        assert_eq!(Output::File("/a/b".into()).to_string(), "/a/b");
    }

    #[test]
    fn from_args_reads_the_file() {
        let dir = std::env::temp_dir().join(format!("flowlog-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flowlog.toml");
        std::fs::write(&path, "window = \"10m\"\n[[interfaces]]\nname = \"lo\"\n").unwrap();
        let mut args = run(&[]);
        args.config = Some(path.clone());
        let c = Config::from_args(&args).unwrap();
        assert_eq!(c.window, Duration::from_secs(600));
        assert_eq!(c.interfaces[0].name, "lo");
        assert!(c.interfaces[0].ifindex > 0);

        args.config = Some(dir.join("missing.toml"));
        let e = Config::from_args(&args).unwrap_err();
        assert!(matches!(e, ConfigError::ReadFile { .. }));
        let msg = e.to_string();
        assert!(msg.starts_with("cannot read config file "), "{msg}");
        assert!(msg.contains("missing.toml"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn real_resolver() {
        assert!(resolve_ifindex("lo").is_some());
        assert_eq!(resolve_ifindex("flowlog-nope0"), None);
        assert_eq!(resolve_ifindex("a\0b"), None);
    }
}
