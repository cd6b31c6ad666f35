//! traffic_path classification: the `[paths]` section of the config file, compiled into
//! the kernel's `PATH_RULES` / `PATH_CIDRS` and the role of every attached interface
//! (`IFACES`).
//!
//! ```toml
//! [[paths.role]]                    # what an interface is on this node
//! name = "vpn"
//! interfaces = ["wg0", "tun*"]      # names or globs; the first role that matches
//! [[paths.set]]                     # address sets
//! name = "onprem"
//! cidrs = ["192.168.0.0/16", "fd00::/8"]
//! [[paths.rule]]                    # first match wins; unmatched streams get 0
//! role = "vpn"                      # optional: the interface's role
//! direction = "out"                 # optional: in | out
//! peer = "onprem"                   # optional: a set holding the peer address
//! path = 9                          # a traffic_path value of the contract
//! ```
//!
//! The peer is the destination of an outbound stream and the source of an inbound
//! one. Without `[paths]`, every record says `traffic_path` `-`.
use std::net::IpAddr;

use aya::maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, MapData, MapError};
use flowlog_common::{config, direction, family, names, select, IfaceConf, PathCidrKey, PathRule};
use serde::Deserialize;

use crate::policy::{cidr, mask};

/// The traffic_path values of the contract (16 is not one).
pub fn is_path_value(v: u64) -> bool {
    matches!(v, 0..=15 | 17..=22)
}

/// `[paths]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathsFile {
    #[serde(default)]
    pub role: Vec<RoleFile>,
    #[serde(default)]
    pub set: Vec<SetFile>,
    #[serde(default)]
    pub rule: Vec<RuleFile>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    pub name: String,
    pub interfaces: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFile {
    pub name: String,
    pub cidrs: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub role: Option<String>,
    pub direction: Option<String>,
    pub peer: Option<String>,
    pub path: u64,
}

/// A `[paths]` section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("[paths] {what}: {problem}")]
    Invalid { what: String, problem: String },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("eBPF object has no map {name}")]
    MissingMap { name: &'static str },
}

/// A compiled `[paths]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Role names (id = position + 1) and their interface patterns.
    roles: Vec<(String, Vec<glob::Pattern>)>,
    /// Address sets (bit = position).
    sets: Vec<(String, Vec<(IpAddr, u8)>)>,
    rules: Vec<PathRule>,
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> PathsError {
    PathsError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

impl Paths {
    /// Validates `[paths]`: names unique, references resolved, CIDRs and path values
    /// valid, at most [`select::MAX_PATH_RULES`] rules.
    pub fn compile(file: &PathsFile) -> Result<Paths, PathsError> {
        let mut roles: Vec<(String, Vec<glob::Pattern>)> = Vec::new();
        for r in &file.role {
            let what = format!("role {:?}", r.name);
            if r.name.is_empty() {
                return Err(invalid("role", "name is empty"));
            }
            if roles.iter().any(|(n, _)| *n == r.name) {
                return Err(invalid(what, "defined twice"));
            }
            if roles.len() >= 254 {
                return Err(invalid(what, "at most 254 roles"));
            }
            let mut pats = Vec::new();
            for i in &r.interfaces {
                let p = glob::Pattern::new(i)
                    .map_err(|e| invalid(&what, format!("interface pattern {i:?}: {e}")))?;
                pats.push(p);
            }
            roles.push((r.name.clone(), pats));
        }
        let mut sets: Vec<(String, Vec<(IpAddr, u8)>)> = Vec::new();
        for s in &file.set {
            let what = format!("set {:?}", s.name);
            if s.name.is_empty() {
                return Err(invalid("set", "name is empty"));
            }
            if sets.iter().any(|(n, _)| *n == s.name) {
                return Err(invalid(what, "defined twice"));
            }
            if sets.len() >= select::MAX_PATH_SETS as usize {
                return Err(invalid(
                    what,
                    format!("at most {} sets", select::MAX_PATH_SETS),
                ));
            }
            let mut cidrs = Vec::new();
            for c in &s.cidrs {
                match cidr(c).map_err(|p| invalid(&what, p))? {
                    Some(v) => cidrs.push(v),
                    None => {
                        return Err(invalid(
                            &what,
                            "\"any\" is not a set member: leave `peer` out of the rule instead",
                        ))
                    }
                }
            }
            sets.push((s.name.clone(), cidrs));
        }
        if file.rule.len() > select::MAX_PATH_RULES as usize {
            return Err(invalid(
                "rule",
                format!("at most {} rules", select::MAX_PATH_RULES),
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in file.rule.iter().enumerate() {
            let what = format!("rule {}", i + 1);
            if !is_path_value(r.path) {
                return Err(invalid(
                    what,
                    format!("path {} is not a traffic_path value (0-15, 17-22)", r.path),
                ));
            }
            let role = match &r.role {
                None => select::ANY,
                Some(n) => match roles.iter().position(|(name, _)| name == n) {
                    Some(p) => (p + 1) as u8,
                    None => return Err(invalid(what, format!("no role named {n:?}"))),
                },
            };
            let dir = match r.direction.as_deref() {
                None => select::ANY,
                Some("in") => direction::IN,
                Some("out") => direction::OUT,
                Some(other) => {
                    return Err(invalid(
                        what,
                        format!("direction {other:?}: use \"in\" or \"out\""),
                    ))
                }
            };
            let set = match &r.peer {
                None => select::ANY,
                Some(n) => match sets.iter().position(|(name, _)| name == n) {
                    Some(p) => p as u8,
                    None => return Err(invalid(what, format!("no set named {n:?}"))),
                },
            };
            rules.push(PathRule {
                role,
                direction: dir,
                set,
                path: r.path as u8,
            });
        }
        Ok(Paths { roles, sets, rules })
    }

    /// Role id of an interface (0: none): the first role with a matching pattern.
    pub fn role_of(&self, ifname: &str) -> u8 {
        self.roles
            .iter()
            .position(|(_, pats)| pats.iter().any(|p| p.matches(ifname)))
            .map_or(0, |p| (p + 1) as u8)
    }

    pub fn rules(&self) -> &[PathRule] {
        &self.rules
    }

    /// Trie entries: per CIDR of any set, the bitmap of the sets that contain it (so a
    /// longest-prefix match yields every set holding the address).
    pub fn cidr_entries(&self) -> Vec<(u32, PathCidrKey, u64)> {
        let all: Vec<(u64, IpAddr, u8)> = self
            .sets
            .iter()
            .enumerate()
            .flat_map(|(bit, (_, cidrs))| cidrs.iter().map(move |(a, l)| (1u64 << bit, *a, *l)))
            .collect();
        let mut prefixes: Vec<(IpAddr, u8)> = all.iter().map(|(_, a, l)| (*a, *l)).collect();
        prefixes.sort();
        prefixes.dedup();
        prefixes
            .into_iter()
            .map(|(addr, len)| {
                let bits = all
                    .iter()
                    .filter(|(_, a, l)| {
                        a.is_ipv4() == addr.is_ipv4() && *l <= len && mask(addr, *l) == *a
                    })
                    .fold(0u64, |acc, (b, _, _)| acc | b);
                let mut key = PathCidrKey {
                    family: 0,
                    addr: [0; 16],
                };
                match addr {
                    IpAddr::V4(a) => {
                        key.family = family::IPV4.into();
                        key.addr[..4].copy_from_slice(&a.octets());
                    }
                    IpAddr::V6(a) => {
                        key.family = family::IPV6.into();
                        key.addr = a.octets();
                    }
                }
                (select::PATH_KEY_PREFIX_BITS + len as u32, key, bits)
            })
            .collect()
    }
}

fn take<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, PathsError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(PathsError::MissingMap { name })?;
    T::try_from(map).map_err(|source| PathsError::Map { name, source })
}

/// The selection and classification maps.
pub struct SelectMaps {
    ifaces: HashMap<MapData, u32, IfaceConf>,
    rules: Array<MapData, PathRule>,
    cidrs: LpmTrie<MapData, PathCidrKey, u64>,
    config: Array<MapData, u32>,
}

impl SelectMaps {
    /// Takes the maps out of the object (before the flow drain takes `CONFIG`).
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, PathsError> {
        let config = crate::policy::config_handle(ebpf).map_err(|e| PathsError::Invalid {
            what: "CONFIG map".into(),
            problem: e.to_string(),
        })?;
        Ok(Self {
            ifaces: take(ebpf, names::IFACES)?,
            rules: take(ebpf, names::PATH_RULES)?,
            cidrs: take(ebpf, names::PATH_CIDRS)?,
            config,
        })
    }

    /// Installs the classification (once, before anything is attached).
    pub fn install(&mut self, paths: &Paths) -> Result<(), PathsError> {
        for (len, key, bits) in paths.cidr_entries() {
            self.cidrs
                .insert(&LpmKey::new(len, key), bits, 0)
                .map_err(|source| PathsError::Map {
                    name: names::PATH_CIDRS,
                    source,
                })?;
        }
        for (i, r) in paths.rules().iter().enumerate() {
            self.rules
                .set(i as u32, *r, 0)
                .map_err(|source| PathsError::Map {
                    name: names::PATH_RULES,
                    source,
                })?;
        }
        self.config
            .set(config::PATH_RULE_COUNT, paths.rules().len() as u32, 0)
            .map_err(|source| PathsError::Map {
                name: names::CONFIG,
                source,
            })
    }

    /// What the programs select on an interface.
    pub fn set_iface(&mut self, ifindex: u32, conf: IfaceConf) -> Result<(), PathsError> {
        self.ifaces
            .insert(ifindex, conf, 0)
            .map_err(|source| PathsError::Map {
                name: names::IFACES,
                source,
            })
    }

    /// Forgets every interface (adopted maps hold a previous agent's entries).
    pub fn clear_ifaces(&mut self) {
        let keys: Vec<u32> = self.ifaces.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = self.ifaces.remove(&k);
        }
    }

    pub fn remove_iface(&mut self, ifindex: u32) {
        let _ = self.ifaces.remove(&ifindex);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(text: &str) -> Result<Paths, PathsError> {
        let f: PathsFile = toml::from_str(text).unwrap();
        Paths::compile(&f)
    }

    const NODE: &str = r#"
[[role]]
name = "vpn"
interfaces = ["wg0", "tun*"]
[[role]]
name = "internet"
interfaces = ["eth0"]
[[set]]
name = "vpc"
cidrs = ["10.0.0.0/16"]
[[set]]
name = "app"
cidrs = ["10.0.1.0/24", "fd00::/8"]
[[rule]]
role = "vpn"
path = 9
[[rule]]
peer = "app"
path = 2
[[rule]]
role = "internet"
direction = "out"
path = 13
"#;

    #[test]
    fn roles_rules_and_nested_sets() {
        let p = compile(NODE).unwrap();
        assert_eq!(p.role_of("wg0"), 1);
        assert_eq!(p.role_of("tun7"), 1);
        assert_eq!(p.role_of("eth0"), 2);
        assert_eq!(p.role_of("eth1"), 0);
        assert_eq!(
            p.rules(),
            &[
                PathRule {
                    role: 1,
                    direction: select::ANY,
                    set: select::ANY,
                    path: 9
                },
                PathRule {
                    role: select::ANY,
                    direction: select::ANY,
                    set: 1,
                    path: 2
                },
                PathRule {
                    role: 2,
                    direction: direction::OUT,
                    set: select::ANY,
                    path: 13
                },
            ]
        );
        let e = p.cidr_entries();
        // 10.0.1.0/24 lies in both sets; 10.0.0.0/16 only in "vpc"; fd00::/8 in "app".
        let find = |len: u32, fam: u8| {
            e.iter()
                .find(|(l, k, _)| *l == 32 + len && k.family == fam as u32)
                .unwrap()
                .2
        };
        assert_eq!(find(16, family::IPV4), 0b01);
        assert_eq!(find(24, family::IPV4), 0b11);
        assert_eq!(find(8, family::IPV6), 0b10);
    }

    #[test]
    fn bad_sections_name_the_problem() {
        for (text, msg) in [
            (
                "[[rule]]\npath = 16\n",
                "[paths] rule 1: path 16 is not a traffic_path value (0-15, 17-22)",
            ),
            (
                "[[rule]]\nrole = \"x\"\npath = 1\n",
                "[paths] rule 1: no role named \"x\"",
            ),
            (
                "[[rule]]\npeer = \"x\"\npath = 1\n",
                "[paths] rule 1: no set named \"x\"",
            ),
            (
                "[[rule]]\ndirection = \"up\"\npath = 1\n",
                "[paths] rule 1: direction \"up\": use \"in\" or \"out\"",
            ),
            (
                "[[set]]\nname = \"a\"\ncidrs = [\"10.0.0.1/8\"]\n",
                "[paths] set \"a\": \"10.0.0.1/8\" has host bits set: did you mean 10.0.0.0/8?",
            ),
            (
                "[[role]]\nname = \"a\"\ninterfaces = [\"[x\"]\n",
                "[paths] role \"a\": interface pattern \"[x\"",
            ),
        ] {
            let e = compile(text).unwrap_err().to_string();
            assert!(e.starts_with(msg), "{e}");
        }
    }
}
