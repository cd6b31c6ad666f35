//! Security policy: rule sets an operator already knows (security groups and network
//! ACLs), compiled into kernel maps and swapped in atomically.
//!
//! ```toml
//! [[rule_set]]
//! name = "web"
//! interfaces = ["eth0"]
//! kind = "stateful"          # stateful (security group) | stateless (network ACL)
//! mode = "audit"             # audit (REJECT recorded, nothing dropped) | enforce
//! default_ingress = "drop"   # default: drop
//! default_egress = "accept"  # default: accept
//!
//! [[rule_set.rule]]
//! id = 100                   # optional, default: position in the set (1-based)
//! priority = 1               # lower first, default: position; ties keep file order
//! direction = "ingress"      # ingress | egress
//! protocol = "tcp"           # all | tcp | udp | icmp | icmpv6 | sctp | 0-255
//! ports = "80"               # "80", "8000-8080" or "all" (default): destination port
//! peer = "10.0.0.2/32"       # source (ingress) / destination (egress) CIDR, or "any"
//! action = "accept"          # accept | drop
//! ```
//!
//! In the kernel, per (rule set, direction, family) an LPM trie maps a peer address to
//! the bitmap of rules whose CIDR contains it (each trie prefix carries the rules of
//! every CIDR that covers it, so the longest match is the full answer); the program
//! then walks those rules in priority order checking protocol and port: at most
//! [`policy::MAX_RULES`] steps. Stateful sets remember accepted connections so their
//! replies are accepted without a rule.
//!
//! Reloads are atomic: the new policy is written into the inactive generation of the
//! policy maps, `CONFIG[POLICY_EPOCH]` is bumped (its low bit selects the
//! generation), and an RCU grace period passes before the call returns. Every packet
//! sees either the old or the new policy; tracked connections of the old epoch are
//! re-evaluated against the new rules from their next packet on.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, MapData, MapError};
use flowlog_common::{
    action, config, direction, family, names, policy, BindingKey, CidrKey, PolicyBinding, Rule,
};
use serde::Deserialize;

use crate::rcu::{RcuBarrier, RcuError};

/// Errors of a policy file: each names the rule set, the rule and the field.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid policy file {path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("rule set {set:?}: {problem}")]
    Set { set: String, problem: String },
    #[error("rule set {set:?}, rule {rule} ({field}): {problem}")]
    Rule {
        set: String,
        /// 1-based position in the set.
        rule: usize,
        field: &'static str,
        problem: String,
    },
    #[error("policy has {count} rule sets, over the limit of {max}", max = policy::MAX_RULE_SETS)]
    TooManySets { count: usize },
    #[error("policy needs {count} CIDR entries, over the limit of {max}", max = policy::MAX_CIDRS)]
    TooManyCidrs { count: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Rcu(#[from] RcuError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Security-group semantics: replies of accepted connections are accepted.
    #[default]
    Stateful,
    /// Network-ACL semantics: every packet is judged by the rules alone.
    Stateless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nothing is dropped; rejected streams are recorded as REJECT.
    #[default]
    Audit,
    /// Rejected packets are dropped.
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
}

impl Verdict {
    fn kernel(self) -> u8 {
        match self {
            Verdict::Accept => action::ACCEPT,
            Verdict::Drop => action::REJECT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn kernel(self) -> u8 {
        match self {
            Direction::Ingress => direction::IN,
            Direction::Egress => direction::OUT,
        }
    }
}

/// The policy file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub rule_set: Vec<RuleSetFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetFile {
    pub name: String,
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default)]
    pub mode: Mode,
    pub default_ingress: Option<Verdict>,
    pub default_egress: Option<Verdict>,
    #[serde(default)]
    pub rule: Vec<RuleFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub id: Option<u32>,
    pub priority: Option<u32>,
    pub direction: Direction,
    #[serde(default)]
    pub protocol: Option<toml::Value>,
    pub ports: Option<toml::Value>,
    pub peer: Option<String>,
    pub action: Verdict,
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    pub id: u32,
    pub priority: u32,
    pub direction: Direction,
    /// `None` = every protocol.
    pub protocol: Option<u8>,
    pub ports: (u16, u16),
    /// `None` = any address of either family.
    pub peer: Option<(IpAddr, u8)>,
    pub action: Verdict,
}

/// A validated rule set, rules in evaluation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub name: String,
    pub interfaces: Vec<String>,
    pub kind: Kind,
    pub mode: Mode,
    pub default_ingress: Verdict,
    pub default_egress: Verdict,
    pub rules: Vec<CompiledRule>,
}

/// A validated policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub sets: Vec<RuleSet>,
}

fn protocol_number(v: &toml::Value) -> Result<Option<u8>, String> {
    match v {
        toml::Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "all" | "any" | "-1" => Ok(None),
            "tcp" => Ok(Some(6)),
            "udp" => Ok(Some(17)),
            "icmp" => Ok(Some(1)),
            "icmpv6" => Ok(Some(58)),
            "sctp" => Ok(Some(132)),
            "dccp" => Ok(Some(33)),
            "udplite" => Ok(Some(136)),
            "gre" => Ok(Some(47)),
            "esp" => Ok(Some(50)),
            "ah" => Ok(Some(51)),
            other => match other.parse::<u8>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => Err(format!(
                    "unknown protocol {s:?}: use all, tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre, esp, ah or a number 0-255"
                )),
            },
        },
        toml::Value::Integer(n) => u8::try_from(*n)
            .map(Some)
            .map_err(|_| format!("protocol number {n} is not in 0-255")),
        other => Err(format!("protocol must be a name or a number, not {other}")),
    }
}

fn has_ports(proto: Option<u8>) -> bool {
    matches!(proto, Some(6 | 17 | 33 | 132 | 136))
}

fn port_range(v: &toml::Value) -> Result<(u16, u16), String> {
    let one = |s: &str| -> Result<u16, String> {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port number (0-65535)"))
    };
    match v {
        toml::Value::Integer(n) => u16::try_from(*n)
            .map(|p| (p, p))
            .map_err(|_| format!("port {n} is not in 0-65535")),
        toml::Value::String(s) if s.eq_ignore_ascii_case("all") => Ok((0, u16::MAX)),
        toml::Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (one(a)?, one(b)?),
                None => {
                    let p = one(s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("port range {s:?} is reversed ({lo} > {hi})"));
            }
            Ok((lo, hi))
        }
        other => Err(format!(
            "ports must be \"all\", a port or \"LO-HI\", not {other}"
        )),
    }
}

pub(crate) fn cidr(s: &str) -> Result<Option<(IpAddr, u8)>, String> {
    if s.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/24, fd00::/64) or \"any\""))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
    };
    let masked = mask(addr, len);
    if masked != addr {
        return Err(format!(
            "{s:?} has host bits set: did you mean {masked}/{len}?"
        ));
    }
    Ok(Some((addr, len)))
}

pub(crate) fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl Policy {
    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|source| PolicyError::Toml {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        Policy::validate(file)
    }

    pub fn validate(file: PolicyFile) -> Result<Policy, PolicyError> {
        if file.rule_set.len() > policy::MAX_RULE_SETS as usize {
            return Err(PolicyError::TooManySets {
                count: file.rule_set.len(),
            });
        }
        let mut sets = Vec::new();
        let mut bound: BTreeMap<String, String> = BTreeMap::new();
        for set in file.rule_set {
            let name = set.name.clone();
            let set_err = |problem: String| PolicyError::Set {
                set: name.clone(),
                problem,
            };
            if set.name.is_empty() {
                return Err(set_err("name is empty".into()));
            }
            if sets.iter().any(|s: &RuleSet| s.name == set.name) {
                return Err(set_err("two rule sets have this name".into()));
            }
            if set.rule.len() > policy::MAX_RULES as usize {
                return Err(set_err(format!(
                    "{} rules, over the limit of {} per rule set",
                    set.rule.len(),
                    policy::MAX_RULES
                )));
            }
            for iface in &set.interfaces {
                if let Some(other) = bound.insert(iface.clone(), set.name.clone()) {
                    return Err(set_err(format!(
                        "interface {iface:?} is already bound to rule set {other:?}"
                    )));
                }
            }
            let mut rules = Vec::new();
            for (i, r) in set.rule.into_iter().enumerate() {
                let pos = i + 1;
                let rule_err = |field: &'static str, problem: String| PolicyError::Rule {
                    set: name.clone(),
                    rule: pos,
                    field,
                    problem,
                };
                let id = r.id.unwrap_or(pos as u32);
                if id > policy::MAX_RULE_ID {
                    return Err(rule_err(
                        "id",
                        format!("{id} is over the largest rule id {}", policy::MAX_RULE_ID),
                    ));
                }
                let protocol = match &r.protocol {
                    None => None,
                    Some(v) => protocol_number(v).map_err(|p| rule_err("protocol", p))?,
                };
                let ports = match &r.ports {
                    None => (0, u16::MAX),
                    Some(v) => port_range(v).map_err(|p| rule_err("ports", p))?,
                };
                if ports != (0, u16::MAX) && !has_ports(protocol) {
                    return Err(rule_err(
                        "ports",
                        "a port range needs protocol tcp, udp, sctp, dccp or udplite".into(),
                    ));
                }
                let peer = match &r.peer {
                    None => None,
                    Some(s) => cidr(s).map_err(|p| rule_err("peer", p))?,
                };
                rules.push(CompiledRule {
                    id,
                    priority: r.priority.unwrap_or(pos as u32),
                    direction: r.direction,
                    protocol,
                    ports,
                    peer,
                    action: r.action,
                });
            }
            // Stable: equal priorities keep file order.
            rules.sort_by_key(|r| r.priority);
            sets.push(RuleSet {
                name: set.name,
                interfaces: set.interfaces,
                kind: set.kind,
                mode: set.mode,
                default_ingress: set.default_ingress.unwrap_or(Verdict::Drop),
                default_egress: set.default_egress.unwrap_or(Verdict::Accept),
                rules,
            });
        }
        let policy = Policy { sets };
        let cidrs = policy.cidr_entries().len();
        if cidrs > policy::MAX_CIDRS as usize {
            return Err(PolicyError::TooManyCidrs { count: cidrs });
        }
        Ok(policy)
    }

    /// Interfaces named by the rule sets.
    pub fn interfaces(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sets.iter().flat_map(|s| {
            s.interfaces
                .iter()
                .map(move |i| (i.as_str(), s.name.as_str()))
        })
    }

    /// LPM trie entries: for each (set, direction, family, CIDR) the bitmap of rules
    /// whose peer contains that CIDR.
    pub fn cidr_entries(&self) -> Vec<(u32, CidrKey, u64)> {
        let mut out = Vec::new();
        for (set_id, set) in self.sets.iter().enumerate() {
            for dir in [Direction::Ingress, Direction::Egress] {
                for fam in [family::IPV4, family::IPV6] {
                    let any: IpAddr = if fam == family::IPV4 {
                        IpAddr::from([0u8; 4])
                    } else {
                        IpAddr::from([0u8; 16])
                    };
                    // Rules of this direction and family, with their bit.
                    let rules: Vec<(u64, IpAddr, u8)> = set
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.direction == dir)
                        .filter_map(|(bit, r)| match r.peer {
                            None => Some((1u64 << bit, any, 0)),
                            Some((a, l)) if a.is_ipv4() == (fam == family::IPV4) => {
                                Some((1u64 << bit, a, l))
                            }
                            Some(_) => None,
                        })
                        .collect();
                    let mut prefixes: Vec<(IpAddr, u8)> =
                        rules.iter().map(|(_, a, l)| (*a, *l)).collect();
                    prefixes.sort();
                    prefixes.dedup();
                    for (addr, len) in prefixes {
                        let bits = rules
                            .iter()
                            .filter(|(_, a, l)| *l <= len && mask(addr, *l) == *a)
                            .fold(0u64, |acc, (b, _, _)| acc | b);
                        let mut key = CidrKey {
                            set_id: set_id as u32,
                            direction: dir.kernel(),
                            family: fam,
                            _pad: [0; 2],
                            addr: [0; 16],
                        };
                        match addr {
                            IpAddr::V4(a) => key.addr[..4].copy_from_slice(&a.octets()),
                            IpAddr::V6(a) => key.addr = a.octets(),
                        }
                        out.push((policy::CIDR_KEY_PREFIX_BITS + len as u32, key, bits));
                    }
                }
            }
        }
        out
    }

    /// Kernel binding of a rule set (by position).
    pub fn binding(&self, set_id: usize) -> PolicyBinding {
        let set = &self.sets[set_id];
        let mut flags = 0;
        if set.kind == Kind::Stateful {
            flags |= policy::FLAG_STATEFUL;
        }
        if set.mode == Mode::Enforce {
            flags |= policy::FLAG_ENFORCE;
        }
        PolicyBinding {
            set_id: set_id as u32,
            rule_count: set.rules.len() as u8,
            flags,
            default_action: [set.default_ingress.kernel(), set.default_egress.kernel()],
        }
    }

    /// Kernel rules of a rule set, in evaluation order.
    pub fn kernel_rules(&self, set_id: usize) -> Vec<Rule> {
        self.sets[set_id]
            .rules
            .iter()
            .map(|r| Rule {
                id: r.id,
                port_lo: r.ports.0,
                port_hi: r.ports.1,
                protocol: r.protocol.unwrap_or(0),
                protocol_any: if r.protocol.is_none() {
                    policy::ANY_PROTOCOL
                } else {
                    0
                },
                action: r.action.kernel(),
                _pad: 0,
            })
            .collect()
    }
}

/// The policy maps of the loaded object (both generations in each, see
/// [`flowlog_common::policy`]).
pub struct PolicyMaps {
    bindings: HashMap<MapData, BindingKey, PolicyBinding>,
    cidrs: LpmTrie<MapData, CidrKey, u64>,
    rules: Array<MapData, Rule>,
    config: Array<MapData, u32>,
    barrier: RcuBarrier,
    epoch: u32,
}

fn take<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, ApplyError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(ApplyError::MissingMap { name })?;
    T::try_from(map).map_err(|source| ApplyError::Map { name, source })
}

/// A second handle on the `CONFIG` map (the flow drain takes the first).
pub(crate) fn config_handle(ebpf: &aya::Ebpf) -> Result<Array<MapData, u32>, ApplyError> {
    use std::os::fd::AsFd as _;
    let name = names::CONFIG;
    let aya::maps::Map::Array(data) = ebpf.map(name).ok_or(ApplyError::MissingMap { name })? else {
        return Err(ApplyError::MissingMap { name });
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| ApplyError::Map {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })?;
    let data = MapData::from_fd(fd).map_err(|source| ApplyError::Map { name, source })?;
    Array::try_from(aya::maps::Map::Array(data)).map_err(|source| ApplyError::Map { name, source })
}

impl PolicyMaps {
    /// Takes the policy maps out of the object (before the flow drain takes `CONFIG`).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, ApplyError> {
        let config = config_handle(ebpf)?;
        // Pinned maps of a previous agent carry on from its epoch.
        let epoch = config
            .get(&flowlog_common::config::POLICY_EPOCH, 0)
            .unwrap_or(0);
        Ok(Self {
            bindings: take(ebpf, names::POLICY_BINDINGS)?,
            cidrs: take(ebpf, names::POLICY_CIDRS)?,
            rules: take(ebpf, names::POLICY_RULES)?,
            config,
            barrier: RcuBarrier::new()?,
            epoch,
        })
    }

    /// Installs `policy` (interfaces resolved by `ifindex`) atomically: returns once
    /// every packet is judged by it.
    pub fn apply(
        &mut self,
        policy: &Policy,
        ifindex: impl Fn(&str) -> Option<u32>,
    ) -> Result<(), ApplyError> {
        let next = self.epoch.wrapping_add(1);
        let g = next & 1;
        self.clear(g)?;
        // This generation's rule sets are numbered from here.
        let first_set = g * policy::MAX_RULE_SETS;
        let map_err = |name| move |source| ApplyError::Map { name, source };
        let mut bound = 0u32;
        for (set_id, set) in policy.sets.iter().enumerate() {
            let mut binding = policy.binding(set_id);
            binding.set_id += first_set;
            for iface in &set.interfaces {
                let Some(ifindex) = ifindex(iface) else {
                    continue;
                };
                let key = BindingKey {
                    ifindex,
                    generation: g,
                };
                self.bindings
                    .insert(key, binding, 0)
                    .map_err(map_err(names::POLICY_BINDINGS))?;
                bound += 1;
            }
            for (i, rule) in policy.kernel_rules(set_id).into_iter().enumerate() {
                let idx = binding.set_id * policy::MAX_RULES + i as u32;
                self.rules
                    .set(idx, rule, 0)
                    .map_err(map_err(names::POLICY_RULES))?;
            }
        }
        for (prefix, mut key, bits) in policy.cidr_entries() {
            key.set_id += first_set;
            self.cidrs
                .insert(&LpmKey::new(prefix, key), bits, 0)
                .map_err(map_err(names::POLICY_CIDRS))?;
        }
        // Programs read POLICY_BOUND, then POLICY_EPOCH. Ordering the two writes so
        // that every mix a program may see means "old policy" or "new policy": a
        // nonzero count goes in before the new epoch, a zero count after it.
        let set =
            |c: &mut Array<MapData, u32>, idx, v| c.set(idx, v, 0).map_err(map_err(names::CONFIG));
        if bound > 0 {
            set(&mut self.config, config::POLICY_BOUND, bound)?;
            set(&mut self.config, config::POLICY_EPOCH, next)?;
        } else {
            set(&mut self.config, config::POLICY_EPOCH, next)?;
            set(&mut self.config, config::POLICY_BOUND, 0)?;
        }
        self.barrier.synchronize()?;
        self.epoch = next;
        Ok(())
    }

    /// Removes generation `g`'s bindings and CIDR entries (its rules are overwritten
    /// by index, and only a set's `rule_count` rules are read).
    fn clear(&mut self, g: u32) -> Result<(), ApplyError> {
        let err = |name| move |source| ApplyError::Map { name, source };
        let keys: Vec<BindingKey> = self
            .bindings
            .keys()
            .collect::<Result<_, _>>()
            .map_err(err(names::POLICY_BINDINGS))?;
        for k in keys.into_iter().filter(|k| k.generation == g) {
            self.bindings
                .remove(&k)
                .map_err(err(names::POLICY_BINDINGS))?;
        }
        let sets = g * policy::MAX_RULE_SETS..(g + 1) * policy::MAX_RULE_SETS;
        let keys: Vec<LpmKey<CidrKey>> = self
            .cidrs
            .keys()
            .collect::<Result<_, _>>()
            .map_err(err(names::POLICY_CIDRS))?;
        for k in keys.into_iter().filter(|k| sets.contains(&k.data().set_id)) {
            self.cidrs.remove(&k).map_err(err(names::POLICY_CIDRS))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, PolicyError> {
        Policy::parse(text, Path::new("policy.toml"))
    }

    const WEB: &str = r#"
[[rule_set]]
name = "web"
interfaces = ["veth0"]
kind = "stateful"
mode = "enforce"

[[rule_set.rule]]
id = 100
priority = 10
direction = "ingress"
protocol = "tcp"
ports = "80"
peer = "10.0.0.2/32"
action = "accept"

[[rule_set.rule]]
id = 200
priority = 20
direction = "ingress"
protocol = "tcp"
ports = 80
peer = "10.0.0.0/24"
action = "drop"

[[rule_set.rule]]
priority = 5
direction = "egress"
action = "accept"
"#;

    #[test]
    fn parses_and_orders_rules_by_priority() {
        let p = parse(WEB).unwrap();
        let set = &p.sets[0];
        assert_eq!(set.kind, Kind::Stateful);
        assert_eq!(set.mode, Mode::Enforce);
        assert_eq!(set.default_ingress, Verdict::Drop);
        assert_eq!(set.default_egress, Verdict::Accept);
        let ids: Vec<u32> = set.rules.iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 100, 200]);
        assert_eq!(set.rules[1].ports, (80, 80));
        assert_eq!(set.rules[1].protocol, Some(6));
        assert_eq!(set.rules[0].protocol, None);
        let b = p.binding(0);
        assert_eq!(b.rule_count, 3);
        assert_eq!(b.flags, policy::FLAG_STATEFUL | policy::FLAG_ENFORCE);
        assert_eq!(b.default_action, [action::REJECT, action::ACCEPT]);
    }

    #[test]
    fn cidr_bitmaps_carry_covering_rules() {
        let p = parse(WEB).unwrap();
        let e = p.cidr_entries();
        let find = |dir: u8, fam: u8, len: u32| {
            e.iter()
                .find(|(l, k, _)| k.direction == dir && k.family == fam && *l == len + 64)
                .map(|(_, k, b)| (k.addr, *b))
        };
        // Sorted rules: bit 0 = egress any, bit 1 = 10.0.0.2/32, bit 2 = 10.0.0.0/24.
        let (addr, bits) = find(direction::IN, family::IPV4, 32).unwrap();
        assert_eq!(&addr[..4], &[10, 0, 0, 2]);
        assert_eq!(bits, 0b110, "the /32 also lies in the /24");
        let (_, bits) = find(direction::IN, family::IPV4, 24).unwrap();
        assert_eq!(bits, 0b100);
        assert_eq!(find(direction::IN, family::IPV6, 0), None);
        // "any" egress rule: both families at /0.
        assert_eq!(find(direction::OUT, family::IPV4, 0).unwrap().1, 0b001);
        assert_eq!(find(direction::OUT, family::IPV6, 0).unwrap().1, 0b001);
    }

    fn rule_error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn one_rule(fields: &str) -> String {
        format!("[[rule_set]]\nname = \"s\"\n[[rule_set.rule]]\ndirection = \"ingress\"\naction = \"accept\"\n{fields}\n")
    }

    #[test]
    fn bad_input_names_the_rule_and_field() {
        let e = rule_error(&one_rule("peer = \"10.0.0.300/24\""));
        assert!(e.contains("rule set \"s\", rule 1 (peer)"), "{e}");
        let e = rule_error(&one_rule("peer = \"10.0.0.1/24\""));
        assert!(e.contains("did you mean 10.0.0.0/24"), "{e}");
        let e = rule_error(&one_rule("protocol = \"tcp\"\nports = \"90-80\""));
        assert!(e.contains("(ports)") && e.contains("reversed"), "{e}");
        let e = rule_error(&one_rule("protocol = \"tcpp\""));
        assert!(
            e.contains("(protocol)") && e.contains("unknown protocol"),
            "{e}"
        );
        let e = rule_error(&one_rule("protocol = \"icmp\"\nports = \"80\""));
        assert!(e.contains("needs protocol tcp"), "{e}");
        let e = rule_error(&one_rule("colour = \"red\""));
        assert!(e.contains("unknown field `colour`"), "{e}");
        let many: String = (0..65)
            .map(|_| "[[rule_set.rule]]\ndirection = \"ingress\"\naction = \"accept\"\n")
            .collect();
        let e = rule_error(&format!("[[rule_set]]\nname = \"big\"\n{many}"));
        assert!(e.contains("65 rules, over the limit of 64"), "{e}");
        let e = rule_error(
            "[[rule_set]]\nname = \"a\"\ninterfaces = [\"x\"]\n[[rule_set]]\nname = \"b\"\ninterfaces = [\"x\"]\n",
        );
        assert!(e.contains("already bound to rule set \"a\""), "{e}");
    }

    #[test]
    fn ipv6_and_any_peers() {
        let p = parse(&one_rule("peer = \"fd00:1::/64\"\nprotocol = 58")).unwrap();
        let r = &p.sets[0].rules[0];
        assert_eq!(r.peer, Some(("fd00:1::".parse().unwrap(), 64)));
        assert_eq!(r.protocol, Some(58));
        let p = parse(&one_rule("peer = \"any\"")).unwrap();
        assert_eq!(p.sets[0].rules[0].peer, None);
    }
}
