//! Loading the eBPF object and attaching its programs to interfaces.
//!
//! TC programs attach with TCX on kernels that have it (6.6+) and through a `clsact`
//! qdisc otherwise; both keep other programs on the interface running (the programs
//! return `TC_ACT_UNSPEC` / TCX "next"). XDP mode puts the ingress observer at XDP
//! instead of TC ingress. Links live in the `Ebpf` object: dropping it detaches
//! everything; a `clsact` qdisc that we had to add is removed by [`Attachments`].
use std::process::Command;

use aya::{
    programs::{
        tc::{self, TcAttachType},
        ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use flowlog_common::names;
use tracing::{debug, warn};

use crate::config::{Config, Mode, XdpAttach};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the eBPF object was not built into this binary (built with AYA_BUILD_SKIP?); rebuild with `cargo build -p flowlog-agent`")]
    NotBuilt,
    #[error("loading the eBPF object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    #[error("eBPF object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("program {name} has an unexpected type: {source}")]
    ProgramType {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("loading program {name} into the kernel (verifier): {source}")]
    Load {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {name} to {interface} ({hook}): {source}")]
    Attach {
        name: &'static str,
        interface: String,
        hook: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
}

impl LoadError {
    /// Whether the kernel refused for lack of privilege (EPERM/EACCES somewhere in
    /// the chain), so the caller can name the capabilities needed.
    pub fn is_permission(&self) -> bool {
        let mut err: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = err {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                    return true;
                }
            }
            err = e.source();
        }
        false
    }
}

/// Streams the skipped-streams set can tell apart per window: a quarter of the flow
/// map, at least 1024.
pub fn skipped_set_size(max_flows: u32) -> u32 {
    (max_flows / 4).max(1024)
}

/// Loads the object with map sizes from `cfg` and loads (verifies) every program.
pub fn load(cfg: &Config) -> Result<Ebpf, LoadError> {
    let object = crate::ebpf_object();
    if object.is_empty() {
        return Err(LoadError::NotBuilt);
    }
    let skipped = skipped_set_size(cfg.max_flows);
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::FLOWS[0], cfg.max_flows)
        .map_max_entries(names::FLOWS[1], cfg.max_flows)
        .map_max_entries(names::SKIPPED_STREAMS[0], skipped)
        .map_max_entries(names::SKIPPED_STREAMS[1], skipped);
    if cfg.policy.is_none() {
        // No policy file: nothing can ever be installed (SIGHUP reloads the file given
        // at start), so the policy maps and the conntrack table (8 MiB) get one entry.
        for name in names::POLICY_BINDINGS
            .into_iter()
            .chain(names::POLICY_CIDRS)
            .chain(names::POLICY_RULES)
            .chain([names::CONNTRACK])
        {
            loader.map_max_entries(name, 1);
        }
    }
    let mut ebpf = loader
        .load(object)
        .map_err(|e| LoadError::Object(Box::new(e)))?;
    for name in [names::TC_INGRESS, names::TC_EGRESS] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| LoadError::Load {
                name,
                source: Box::new(source),
            })?;
    }
    if cfg.mode == Mode::Xdp {
        xdp(&mut ebpf)?.load().map_err(|source| LoadError::Load {
            name: names::XDP_INGRESS,
            source: Box::new(source),
        })?;
    }
    Ok(ebpf)
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::ProgramType {
            name,
            source: Box::new(source),
        })
}

fn xdp(ebpf: &mut Ebpf) -> Result<&mut Xdp, LoadError> {
    let name = names::XDP_INGRESS;
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::ProgramType {
            name,
            source: Box::new(source),
        })
}

/// What was attached, for logs and for clean-up beyond the links themselves.
#[derive(Debug, Default)]
pub struct Attachments {
    /// Interfaces on which we added the `clsact` qdisc (pre-TCX kernels only).
    added_clsact: Vec<String>,
    /// How each interface is hooked, e.g. "tcx ingress+egress".
    pub hooks: Vec<(String, String)>,
}

impl Drop for Attachments {
    fn drop(&mut self) {
        for iface in &self.added_clsact {
            // aya has no qdisc delete; `tc` is part of iproute2 on every node that
            // lacks TCX. Failure leaves an empty clsact qdisc, which is harmless.
            match Command::new("tc")
                .args(["qdisc", "del", "dev", iface, "clsact"])
                .status()
            {
                Ok(s) if s.success() => debug!(interface = %iface, "removed clsact qdisc"),
                other => {
                    warn!(interface = %iface, result = ?other, "could not remove the clsact qdisc flowlog added")
                }
            }
        }
    }
}

/// Attaches the programs to every configured interface.
pub fn attach(ebpf: &mut Ebpf, cfg: &Config) -> Result<Attachments, LoadError> {
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    let mut att = Attachments::default();
    for iface in &cfg.interfaces {
        let name = iface.name.as_str();
        if !tcx {
            match tc::qdisc_add_clsact(name) {
                Ok(()) => att.added_clsact.push(name.to_owned()),
                // EEXIST: the interface already has clsact (someone else's): keep it.
                Err(e) => debug!(interface = name, error = %e, "clsact not added"),
            }
        }
        let tc_hook = if tcx { "tcx" } else { "tc clsact" };
        let mut hooks = Vec::new();
        let ingress_at_xdp = cfg.mode == Mode::Xdp;
        if ingress_at_xdp {
            let mode = match cfg.xdp_attach {
                XdpAttach::Auto => XdpMode::Default,
                XdpAttach::Native => XdpMode::Driver,
                XdpAttach::Generic => XdpMode::Skb,
            };
            xdp(ebpf)?
                .attach(name, mode)
                .map_err(|source| LoadError::Attach {
                    name: names::XDP_INGRESS,
                    interface: name.to_owned(),
                    hook: "xdp",
                    source: Box::new(source),
                })?;
            hooks.push("xdp ingress".to_owned());
        } else {
            classifier(ebpf, names::TC_INGRESS)?
                .attach(name, TcAttachType::Ingress)
                .map_err(|source| LoadError::Attach {
                    name: names::TC_INGRESS,
                    interface: name.to_owned(),
                    hook: tc_hook,
                    source: Box::new(source),
                })?;
            hooks.push(format!("{tc_hook} ingress"));
        }
        classifier(ebpf, names::TC_EGRESS)?
            .attach(name, TcAttachType::Egress)
            .map_err(|source| LoadError::Attach {
                name: names::TC_EGRESS,
                interface: name.to_owned(),
                hook: tc_hook,
                source: Box::new(source),
            })?;
        hooks.push(format!("{tc_hook} egress"));
        att.hooks.push((name.to_owned(), hooks.join(", ")));
    }
    Ok(att)
}
