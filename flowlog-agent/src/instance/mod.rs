//! Flow log instances: what a user configures (the contract's "Flow log instances").
//!
//! A flow log has a name, a resource (`ENI`: interfaces by name; `vSwitch`: the ports
//! of a Linux bridge, or a glob over interface names; `VPC`: every interface of the
//! node but `lo`), a data transfer type, an IP version, a capture window, the
//! traffic paths it records, where its records go, and a state (active or inactive).
//!
//! - [`FlowLogFile`]: the settings as written (`[[flow_log]]`, API requests, the state
//!   file), validated into a [`FlowLogSpec`] by [`FlowLogSpec::validate`].
//! - [`registry`]: the instances of the node, their state, the quota, persistence.
//! - [`scope`]: the node's interfaces (rtnetlink dump and link events) and which ones
//!   each instance covers.
//! - [`schedule`]: per-instance windows over the kernel's capture ticks.
//! - [`control`]: the local control socket and the CLI that talks to it.
//! - [`journal`]: the accumulated ticks of multi-tick windows, on disk (crash safety).
pub mod control;
pub mod journal;
pub mod registry;
pub mod schedule;
pub mod scope;

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::{Output, TransferType},
    paths::is_path_value,
    window::{format_window, parse_window},
};

/// Instances per node unless `max_flow_logs` says otherwise (the cloud's quota).
pub const DEFAULT_MAX_FLOW_LOGS: usize = 10;
/// Window of an instance that does not give one (the cloud's default).
pub const DEFAULT_INSTANCE_WINDOW: Duration = Duration::from_secs(600);
/// Longest instance window.
pub const MAX_INSTANCE_WINDOW: Duration = Duration::from_secs(600);

/// A flow log as written in `[[flow_log]]`, in a `create` request and in the state
/// file. Every value is a string (or a list of strings) so that the CLI, TOML and JSON
/// spell them the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowLogFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub resource_type: String,
    #[serde(default)]
    pub resource_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<String>,
    /// `all` or a comma-separated list of traffic_path values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_path: Option<String>,
    /// `-` (stdout) or a file (records appended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Names of `[[sink]]` tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<String>,
    /// `active` (default) or `inactive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// What an instance covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// Interfaces by name.
    Eni(Vec<String>),
    /// Bridges (their ports) or globs over interface names.
    VSwitch(Vec<VSwitch>),
    /// Every interface of the network namespace but `lo`; the id names the network
    /// (the records' `vpc-id`).
    Vpc(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VSwitch {
    Bridge(String),
    Glob(glob::Pattern),
}

impl Resource {
    pub fn type_name(&self) -> &'static str {
        match self {
            Resource::Eni(_) => "ENI",
            Resource::VSwitch(_) => "vSwitch",
            Resource::Vpc(_) => "VPC",
        }
    }

    pub fn ids(&self) -> Vec<String> {
        match self {
            Resource::Eni(v) => v.clone(),
            Resource::VSwitch(v) => v
                .iter()
                .map(|s| match s {
                    VSwitch::Bridge(b) => b.clone(),
                    VSwitch::Glob(g) => g.as_str().to_owned(),
                })
                .collect(),
            Resource::Vpc(id) => id.iter().cloned().collect(),
        }
    }
}

/// IP versions an instance records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpVersion {
    Ipv4,
    #[default]
    DualStack,
}

/// A validated flow log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogSpec {
    pub name: String,
    pub description: String,
    pub resource: Resource,
    pub window: Duration,
    pub transfer_type: TransferType,
    pub ip_version: IpVersion,
    /// `None`: every path.
    pub paths: Option<BTreeSet<u8>>,
    /// `None`: stdout unless `sinks` name destinations.
    pub output: Option<Output>,
    pub sinks: Vec<String>,
}

/// A request or declaration that cannot be honoured; nothing was changed. Every
/// message names the problem (the CLI exits 2 with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    #[error("no flow log named {name:?} (see `flowlog list`)")]
    Unknown { name: String },
    #[error("a flow log named {name:?} already exists")]
    Duplicate { name: String },
    #[error(
        "quota exceeded: this node holds at most {max} flow logs (max_flow_logs); delete one first"
    )]
    Quota { max: usize },
    #[error("flow log name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'")]
    BadName { name: String },
    #[error("resource type {given:?}: use ENI, vSwitch or VPC")]
    ResourceType { given: String },
    #[error("resource type {kind}: give at least one --resource-id ({what})")]
    NoResourceId {
        kind: &'static str,
        what: &'static str,
    },
    #[error("ENI {name:?}: no such interface on this node (see `ip link`)")]
    UnknownInterface { name: String },
    #[error("vSwitch {name:?}: no bridge of that name on this node (see `ip link show type bridge`); a name pattern needs a glob character, e.g. \"veth*\"")]
    UnknownBridge { name: String },
    #[error("vSwitch {pattern:?}: bad glob: {problem}")]
    BadGlob { pattern: String, problem: String },
    #[error(
        "window {given:?} is not allowed: use 1m, 5m or 10m (or whole seconds up to 600, e.g. 10s)"
    )]
    Window { given: String },
    #[error("traffic type {given:?}: use All, Allow or Reject")]
    TrafficType { given: String },
    #[error("IP version {given:?}: use IPv4 or Dual-stack")]
    IpVersion { given: String },
    #[error("traffic path {given:?} is not a traffic_path value (0-15, 17-22) or \"all\"")]
    UnknownPath { given: String },
    #[error("traffic path {given:?}: this node classifies no paths (add a [paths] section to the config file), so only \"all\" can be recorded")]
    PathsNotConfigured { given: String },
    #[error("sink {name:?}: no [[sink]] of that name in the config file")]
    UnknownSink { name: String },
    #[error("output is empty: use \"-\" for stdout or a file path")]
    EmptyOutput,
    #[error("state {given:?}: use active or inactive")]
    State { given: String },
    #[error("flow log {name:?} is declared in the config file (or on the command line): remove it there")]
    Declared { name: String },
    #[error("bad request: {message}")]
    BadRequest { message: String },
}

/// What validation needs to know about the node.
pub struct Checks<'a> {
    /// Interface existence (`None`: not checked, as when reloading saved instances
    /// whose interfaces may come later).
    pub interface_exists: Option<&'a dyn Fn(&str) -> bool>,
    /// Whether a bridge of this name exists (checked with `interface_exists`).
    pub bridge_exists: &'a dyn Fn(&str) -> bool,
    pub paths_configured: bool,
    pub sinks: &'a [String],
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses an instance window: whole seconds, 1 s to 10 min.
pub fn instance_window(s: &str) -> Result<Duration, InstanceError> {
    let err = || InstanceError::Window {
        given: s.to_owned(),
    };
    let w = parse_window(s).map_err(|_| err())?;
    if w > MAX_INSTANCE_WINDOW {
        return Err(err());
    }
    Ok(w)
}

/// Parses `all` or `9,13` (also `9, 13`).
pub fn parse_paths(s: &str) -> Result<Option<BTreeSet<u8>>, InstanceError> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let mut set = BTreeSet::new();
    for part in s.split(',') {
        let v: u64 = part
            .trim()
            .parse()
            .map_err(|_| InstanceError::UnknownPath {
                given: part.trim().to_owned(),
            })?;
        if !is_path_value(v) {
            return Err(InstanceError::UnknownPath {
                given: part.trim().to_owned(),
            });
        }
        set.insert(v as u8);
    }
    Ok(Some(set))
}

impl FlowLogSpec {
    /// Validates a flow log as written. Returns the spec and whether it starts active.
    pub fn validate(
        f: &FlowLogFile,
        checks: &Checks<'_>,
    ) -> Result<(FlowLogSpec, bool), InstanceError> {
        if !valid_name(&f.name) {
            return Err(InstanceError::BadName {
                name: f.name.clone(),
            });
        }
        let ids: Vec<String> = f
            .resource_ids
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        let resource = match f.resource_type.to_ascii_lowercase().as_str() {
            "eni" => {
                if ids.is_empty() {
                    return Err(InstanceError::NoResourceId {
                        kind: "ENI",
                        what: "an interface name",
                    });
                }
                for id in &ids {
                    if crate::config::check_ifname(id, "ENI").is_err() {
                        return Err(InstanceError::UnknownInterface { name: id.clone() });
                    }
                    if let Some(exists) = checks.interface_exists {
                        if !exists(id) {
                            return Err(InstanceError::UnknownInterface { name: id.clone() });
                        }
                    }
                }
                Resource::Eni(ids)
            }
            "vswitch" => {
                if ids.is_empty() {
                    return Err(InstanceError::NoResourceId {
                        kind: "vSwitch",
                        what: "a bridge name or a glob such as \"veth*\"",
                    });
                }
                let mut out = Vec::new();
                for id in &ids {
                    if id.contains(['*', '?', '[']) {
                        let p = glob::Pattern::new(id).map_err(|e| InstanceError::BadGlob {
                            pattern: id.clone(),
                            problem: e.to_string(),
                        })?;
                        out.push(VSwitch::Glob(p));
                    } else {
                        if checks.interface_exists.is_some() && !(checks.bridge_exists)(id) {
                            return Err(InstanceError::UnknownBridge { name: id.clone() });
                        }
                        out.push(VSwitch::Bridge(id.clone()));
                    }
                }
                Resource::VSwitch(out)
            }
            "vpc" => Resource::Vpc(ids.first().cloned()),
            _ => {
                return Err(InstanceError::ResourceType {
                    given: f.resource_type.clone(),
                })
            }
        };
        let window = match &f.window {
            Some(w) => instance_window(w)?,
            None => DEFAULT_INSTANCE_WINDOW,
        };
        let transfer_type = match f
            .traffic_type
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("all") => TransferType::All,
            Some("allow") => TransferType::Allow,
            Some("reject") => TransferType::Reject,
            Some(_) => {
                return Err(InstanceError::TrafficType {
                    given: f.traffic_type.clone().unwrap_or_default(),
                })
            }
        };
        let ip_version = match f
            .ip_version
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("dual-stack") | Some("dualstack") => IpVersion::DualStack,
            Some("ipv4") => IpVersion::Ipv4,
            Some(_) => {
                return Err(InstanceError::IpVersion {
                    given: f.ip_version.clone().unwrap_or_default(),
                })
            }
        };
        let paths = match &f.traffic_path {
            None => None,
            Some(s) => {
                let p = parse_paths(s)?;
                if p.is_some() && !checks.paths_configured {
                    return Err(InstanceError::PathsNotConfigured { given: s.clone() });
                }
                p
            }
        };
        let output = match f.output.as_deref() {
            None => None,
            Some("") => return Err(InstanceError::EmptyOutput),
            Some("-") => Some(Output::Stdout),
            Some(p) => Some(Output::File(PathBuf::from(p))),
        };
        for s in &f.sinks {
            if !checks.sinks.contains(s) {
                return Err(InstanceError::UnknownSink { name: s.clone() });
            }
        }
        let active = match f.state.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("active") => true,
            Some("inactive") => false,
            Some(_) => {
                return Err(InstanceError::State {
                    given: f.state.clone().unwrap_or_default(),
                })
            }
        };
        Ok((
            FlowLogSpec {
                name: f.name.clone(),
                description: f.description.clone(),
                resource,
                window,
                transfer_type,
                ip_version,
                paths,
                output,
                sinks: f.sinks.clone(),
            },
            active,
        ))
    }

    /// The spec as written (what the state file and `describe` hold).
    pub fn to_file(&self, active: bool) -> FlowLogFile {
        FlowLogFile {
            name: self.name.clone(),
            description: self.description.clone(),
            resource_type: self.resource.type_name().to_owned(),
            resource_ids: self.resource.ids(),
            window: Some(format_window(self.window)),
            traffic_type: Some(
                match self.transfer_type {
                    TransferType::All => "All",
                    TransferType::Allow => "Allow",
                    TransferType::Reject => "Reject",
                }
                .to_owned(),
            ),
            ip_version: Some(
                match self.ip_version {
                    IpVersion::Ipv4 => "IPv4",
                    IpVersion::DualStack => "Dual-stack",
                }
                .to_owned(),
            ),
            traffic_path: Some(match &self.paths {
                None => "all".to_owned(),
                Some(set) => set.iter().map(u8::to_string).collect::<Vec<_>>().join(","),
            }),
            output: self.output.as_ref().map(|o| match o {
                Output::Stdout => "-".to_owned(),
                Output::File(p) => p.display().to_string(),
            }),
            sinks: self.sinks.clone(),
            state: Some(if active { "active" } else { "inactive" }.to_owned()),
        }
    }

    /// Whether a stream (by family, verdict and path) is one of this instance's.
    pub fn wants(&self, family: u8, action: u8, path: u8) -> bool {
        use flowlog_common::{action as act, family as fam};
        if self.ip_version == IpVersion::Ipv4 && family != fam::IPV4 {
            return false;
        }
        let verdict_ok = match self.transfer_type {
            TransferType::All => true,
            TransferType::Allow => action == act::ACCEPT,
            TransferType::Reject => action == act::REJECT,
        };
        verdict_ok && self.paths.as_ref().is_none_or(|p| p.contains(&path))
    }

    /// The kernel selection of this instance (`IfaceConf` bits), before the union with
    /// the other instances on an interface.
    pub fn selection(&self) -> (u8, u32) {
        use flowlog_common::select as sel;
        let mut bits = match self.ip_version {
            IpVersion::Ipv4 => sel::IPV4,
            IpVersion::DualStack => sel::IPV4 | sel::IPV6,
        };
        bits |= match self.transfer_type {
            TransferType::All => sel::ACCEPT | sel::REJECT,
            TransferType::Allow => sel::ACCEPT,
            TransferType::Reject => sel::REJECT,
        };
        let paths = match &self.paths {
            None => sel::ALL_PATHS,
            Some(set) => set.iter().fold(0u32, |acc, v| acc | (1u32 << v)),
        };
        (bits, paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks<'a>(
        exists: &'a dyn Fn(&str) -> bool,
        bridge: &'a dyn Fn(&str) -> bool,
        sinks: &'a [String],
    ) -> Checks<'a> {
        Checks {
            interface_exists: Some(exists),
            bridge_exists: bridge,
            paths_configured: true,
            sinks,
        }
    }

    fn file(name: &str, t: &str, ids: &[&str]) -> FlowLogFile {
        FlowLogFile {
            name: name.into(),
            resource_type: t.into(),
            resource_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn validates_and_round_trips() {
        let exists = |n: &str| n == "wg0" || n == "wg1" || n == "br0";
        let bridge = |n: &str| n == "br0";
        let sinks = vec!["archive".to_string()];
        let c = checks(&exists, &bridge, &sinks);
        let mut f = file("vpn", "eni", &["wg0", "wg1"]);
        f.window = Some("1m".into());
        f.traffic_type = Some("reject".into());
        f.ip_version = Some("IPv4".into());
        f.traffic_path = Some("9, 13".into());
        f.sinks = vec!["archive".into()];
        let (spec, active) = FlowLogSpec::validate(&f, &c).unwrap();
        assert!(active);
        assert_eq!(
            spec.resource,
            Resource::Eni(vec!["wg0".into(), "wg1".into()])
        );
        assert_eq!(spec.window, Duration::from_secs(60));
        assert_eq!(spec.paths, Some([9u8, 13].into_iter().collect()));
        let back = spec.to_file(false);
        assert_eq!(back.resource_type, "ENI");
        assert_eq!(back.traffic_path.as_deref(), Some("9,13"));
        assert_eq!(back.state.as_deref(), Some("inactive"));
        let (again, active) = FlowLogSpec::validate(&back, &c).unwrap();
        assert_eq!(again, spec);
        assert!(!active);
        assert!(spec.wants(4, 1, 9));
        assert!(!spec.wants(6, 1, 9));
        assert!(!spec.wants(4, 0, 9));
        assert!(!spec.wants(4, 1, 2));
        assert_eq!(spec.selection(), (1 | 8, (1 << 9) | (1 << 13)));

        let (vs, _) = FlowLogSpec::validate(&file("s", "VSWITCH", &["br0", "veth*"]), &c).unwrap();
        assert_eq!(vs.resource.ids(), ["br0", "veth*"]);
        assert_eq!(vs.window, DEFAULT_INSTANCE_WINDOW);
        let (vpc, _) = FlowLogSpec::validate(&file("v", "VPC", &[]), &c).unwrap();
        assert_eq!(vpc.resource, Resource::Vpc(None));
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let exists = |n: &str| n == "br0" || n == "eth0";
        let bridge = |n: &str| n == "br0";
        let c = checks(&exists, &bridge, &[]);
        let cases: Vec<(FlowLogFile, &str)> = vec![
            (file("a b", "ENI", &["eth0"]), "flow log name \"a b\""),
            (
                file("a", "subnet", &["eth0"]),
                "resource type \"subnet\": use ENI, vSwitch or VPC",
            ),
            (
                file("a", "ENI", &[]),
                "resource type ENI: give at least one --resource-id",
            ),
            (
                file("a", "ENI", &["nope0"]),
                "ENI \"nope0\": no such interface on this node",
            ),
            (
                file("a", "vSwitch", &["eth0"]),
                "vSwitch \"eth0\": no bridge of that name",
            ),
            (
                file("a", "vSwitch", &["veth[*"]),
                "vSwitch \"veth[*\": bad glob",
            ),
            (
                FlowLogFile {
                    window: Some("1h".into()),
                    ..file("a", "VPC", &[])
                },
                "window \"1h\" is not allowed",
            ),
            (
                FlowLogFile {
                    window: Some("11m".into()),
                    ..file("a", "VPC", &[])
                },
                "window \"11m\" is not allowed",
            ),
            (
                FlowLogFile {
                    traffic_path: Some("16".into()),
                    ..file("a", "VPC", &[])
                },
                "traffic path \"16\" is not a traffic_path value",
            ),
            (
                FlowLogFile {
                    traffic_type: Some("some".into()),
                    ..file("a", "VPC", &[])
                },
                "traffic type \"some\"",
            ),
            (
                FlowLogFile {
                    ip_version: Some("IPv6".into()),
                    ..file("a", "VPC", &[])
                },
                "IP version \"IPv6\"",
            ),
            (
                FlowLogFile {
                    sinks: vec!["x".into()],
                    ..file("a", "VPC", &[])
                },
                "sink \"x\": no [[sink]]",
            ),
        ];
        for (f, msg) in cases {
            let e = FlowLogSpec::validate(&f, &c).unwrap_err().to_string();
            assert!(e.starts_with(msg), "{e} vs {msg}");
        }
        let no_paths = Checks {
            paths_configured: false,
            ..checks(&exists, &bridge, &[])
        };
        let e = FlowLogSpec::validate(
            &FlowLogFile {
                traffic_path: Some("9".into()),
                ..file("a", "VPC", &[])
            },
            &no_paths,
        )
        .unwrap_err();
        assert!(matches!(e, InstanceError::PathsNotConfigured { .. }));
        // "all" needs no [paths].
        assert!(FlowLogSpec::validate(
            &FlowLogFile {
                traffic_path: Some("all".into()),
                ..file("a", "VPC", &[])
            },
            &no_paths
        )
        .is_ok());
    }
}
