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
        tc::{self, SchedClassifierLinkId, TcAttachType},
        xdp::XdpLinkId,
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

/// The links of one interface.
#[derive(Debug)]
pub struct IfaceLinks {
    pub name: String,
    ingress_tc: Option<SchedClassifierLinkId>,
    ingress_xdp: Option<XdpLinkId>,
    egress: SchedClassifierLinkId,
    /// We added the `clsact` qdisc (pre-TCX kernels only): removed on detach.
    added_clsact: bool,
    /// How it is hooked, e.g. "tcx ingress, tcx egress".
    pub hooks: String,
}

/// Attaches the programs to one interface (by name; `mode`/`xdp_attach` as configured).
pub fn attach_one(
    ebpf: &mut Ebpf,
    mode: Mode,
    xdp_attach: XdpAttach,
    name: &str,
) -> Result<IfaceLinks, LoadError> {
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    let mut added_clsact = false;
    if !tcx {
        match tc::qdisc_add_clsact(name) {
            Ok(()) => added_clsact = true,
            // EEXIST: the interface already has clsact (someone else's): keep it.
            Err(e) => debug!(interface = name, error = %e, "clsact not added"),
        }
    }
    let tc_hook = if tcx { "tcx" } else { "tc clsact" };
    let mut hooks = Vec::new();
    let (mut ingress_tc, mut ingress_xdp): (Option<SchedClassifierLinkId>, Option<XdpLinkId>) =
        (None, None);
    if mode == Mode::Xdp {
        let how = match xdp_attach {
            XdpAttach::Auto => XdpMode::Default,
            XdpAttach::Native => XdpMode::Driver,
            XdpAttach::Generic => XdpMode::Skb,
        };
        ingress_xdp = Some(
            xdp(ebpf)?
                .attach(name, how)
                .map_err(|source| LoadError::Attach {
                    name: names::XDP_INGRESS,
                    interface: name.to_owned(),
                    hook: "xdp",
                    source: Box::new(source),
                })?,
        );
        hooks.push("xdp ingress".to_owned());
    } else {
        ingress_tc = Some(
            classifier(ebpf, names::TC_INGRESS)?
                .attach(name, TcAttachType::Ingress)
                .map_err(|source| LoadError::Attach {
                    name: names::TC_INGRESS,
                    interface: name.to_owned(),
                    hook: tc_hook,
                    source: Box::new(source),
                })?,
        );
        hooks.push(format!("{tc_hook} ingress"));
    }
    let egress = match classifier(ebpf, names::TC_EGRESS)?.attach(name, TcAttachType::Egress) {
        Ok(id) => id,
        Err(source) => {
            // Leave nothing half-attached.
            if let Some(id) = ingress_tc {
                let _ = classifier(ebpf, names::TC_INGRESS).map(|p| p.detach(id));
            }
            if let Some(id) = ingress_xdp {
                let _ = xdp(ebpf).map(|p| p.detach(id));
            }
            return Err(LoadError::Attach {
                name: names::TC_EGRESS,
                interface: name.to_owned(),
                hook: tc_hook,
                source: Box::new(source),
            });
        }
    };
    hooks.push(format!("{tc_hook} egress"));
    Ok(IfaceLinks {
        name: name.to_owned(),
        ingress_tc,
        ingress_xdp,
        egress,
        added_clsact,
        hooks: hooks.join(", "),
    })
}

/// Detaches one interface's programs. An interface that is already gone has lost its
/// links with it (the kernel detaches on unregister): the errors are only logged.
pub fn detach_one(ebpf: &mut Ebpf, links: IfaceLinks) {
    if let Some(id) = links.ingress_tc {
        if let Ok(p) = classifier(ebpf, names::TC_INGRESS) {
            if let Err(e) = p.detach(id) {
                debug!(interface = %links.name, error = %e, "tc ingress detach");
            }
        }
    }
    if let Some(id) = links.ingress_xdp {
        if let Ok(p) = xdp(ebpf) {
            if let Err(e) = p.detach(id) {
                debug!(interface = %links.name, error = %e, "xdp detach");
            }
        }
    }
    if let Ok(p) = classifier(ebpf, names::TC_EGRESS) {
        if let Err(e) = p.detach(links.egress) {
            debug!(interface = %links.name, error = %e, "tc egress detach");
        }
    }
    if links.added_clsact {
        // aya has no qdisc delete; `tc` is part of iproute2 on every node that lacks
        // TCX. Failure leaves an empty clsact qdisc, which is harmless.
        match Command::new("tc")
            .args(["qdisc", "del", "dev", &links.name, "clsact"])
            .status()
        {
            Ok(s) if s.success() => debug!(interface = %links.name, "removed clsact qdisc"),
            other => {
                warn!(interface = %links.name, result = ?other, "could not remove the clsact qdisc flowlog added")
            }
        }
    }
}
