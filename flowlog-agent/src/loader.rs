//! Loading the eBPF object and attaching its programs to interfaces.
//!
//! TC programs attach with TCX on kernels that have it (6.6+) and through a `clsact`
//! qdisc otherwise; both keep other programs on the interface running (the programs
//! return `TC_ACT_UNSPEC` / TCX "next"). XDP mode puts the ingress observer at XDP
//! instead of TC ingress. Links live in the `Ebpf` object: dropping it detaches
//! everything; a `clsact` qdisc that we had to add is removed by [`Attachments`].
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, SchedClassifierLink, TcAttachType},
        xdp::XdpLink,
        ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use flowlog_common::{names, table};
use tracing::{debug, warn};

use crate::{
    config::{Config, Mode, XdpAttach},
    pin::Pins,
};

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
    #[error("pinning the link of {interface} at {}: {source}", path.display())]
    Pin {
        interface: String,
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("{name} on {interface} ({hook}) is not a link with an fd: {problem}")]
    LinkFd {
        name: &'static str,
        interface: String,
        hook: &'static str,
        problem: String,
    },
    #[error("taking over the pinned link {}: {problem}", path.display())]
    Adopt { path: PathBuf, problem: String },
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

/// A loader with the flow table sized for `max_flows` (harnesses that load the object
/// themselves; then [`crate::drain::init_config`]).
pub fn sized<'a>(max_flows: u32) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader
        // Both generations in one map each (see `flowlog_ebpf::flows`).
        .map_max_entries(
            names::INDEX,
            table::index_slots(max_flows).saturating_mul(2),
        )
        .map_max_entries(names::TABLE, max_flows.saturating_mul(2))
        .map_max_entries(names::FLOWS[0], table::overflow(max_flows))
        .map_max_entries(names::FLOWS[1], table::overflow(max_flows))
        .map_max_entries(names::CACHE, flowlog_common::cache_entries(possible_cpus()));
    loader
}

/// The possible CPUs (what `bpf_get_smp_processor_id` ranges over); 1 if the kernel
/// does not say, which leaves the other CPUs without a stream cache (slower, not
/// wrong: their packets take the shared table).
fn possible_cpus() -> u32 {
    match aya::util::nr_cpus() {
        Ok(n) => n as u32,
        Err((path, error)) => {
            warn!(path, %error, "possible CPUs unknown: only CPU 0 gets a stream cache");
            1
        }
    }
}

/// Loads the object with map sizes from `cfg` and loads (verifies) every program. With
/// `pins`, every map is pinned there (or the pinned one is reused).
pub fn load(cfg: &Config, pins: Option<&Pins>) -> Result<Ebpf, LoadError> {
    let object = crate::ebpf_object();
    if object.is_empty() {
        return Err(LoadError::NotBuilt);
    }
    let skipped = skipped_set_size(cfg.max_flows);
    let mut loader = sized(cfg.max_flows);
    loader
        .map_max_entries(names::SKIPPED_STREAMS[0], skipped)
        .map_max_entries(names::SKIPPED_STREAMS[1], skipped);
    if cfg.policy.is_none() {
        // No policy file: nothing can ever be installed (SIGHUP reloads the file given
        // at start), so the policy maps and the conntrack table (8 MiB) get one entry.
        for name in [
            names::POLICY_BINDINGS,
            names::POLICY_CIDRS,
            names::POLICY_RULES,
            names::CONNTRACK,
        ] {
            loader.map_max_entries(name, 1);
        }
    }
    if let Some(pins) = pins {
        for name in names::PINNED {
            loader.map_pin_path(name, pins.map_path(name));
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

/// The links of one interface, held as link fds (and pinned with `--pin-dir`).
#[derive(Debug)]
pub struct IfaceLinks {
    pub name: String,
    links: Vec<Hold>,
    /// We added the `clsact` qdisc (pre-TCX kernels only): removed on detach.
    added_clsact: bool,
    /// How it is hooked, e.g. "tcx ingress, tcx egress".
    pub hooks: String,
}

fn link_err<'a>(
    name: &'static str,
    interface: &'a str,
    hook: &'static str,
) -> impl FnOnce(ProgramError) -> LoadError + 'a {
    move |source| LoadError::Attach {
        name,
        interface: interface.to_owned(),
        hook,
        source: Box::new(source),
    }
}

fn fd_link<L>(
    link: L,
    name: &'static str,
    interface: &str,
    hook: &'static str,
) -> Result<FdLink, LoadError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    FdLink::try_from(link).map_err(|e| LoadError::LinkFd {
        name,
        interface: interface.to_owned(),
        hook,
        problem: e.to_string(),
    })
}

/// A link the agent holds: an fd link (TCX, XDP), pinned or not, or a netlink clsact
/// filter (pre-TCX kernels, detached when dropped).
#[derive(Debug)]
enum Hold {
    Fd(FdLink, Option<PathBuf>),
    Netlink(#[allow(dead_code)] SchedClassifierLink),
}

/// Pins `link` at `path` (if any) and keeps its fd.
fn keep(link: FdLink, path: Option<PathBuf>, interface: &str) -> Result<Hold, LoadError> {
    match path {
        None => Ok(Hold::Fd(link, None)),
        Some(p) => {
            let _ = std::fs::remove_file(&p);
            let pinned = link.pin(&p).map_err(|e| LoadError::Pin {
                interface: interface.to_owned(),
                path: p.clone(),
                source: Box::new(e),
            })?;
            Ok(Hold::Fd(FdLink::from(pinned), Some(p)))
        }
    }
}

/// Attaches the programs to one interface (by name; `mode`/`xdp_attach` as
/// configured), pinning the links under `pins`.
pub fn attach_one(
    ebpf: &mut Ebpf,
    mode: Mode,
    xdp_attach: XdpAttach,
    name: &str,
    ifindex: u32,
    pins: Option<&Pins>,
) -> Result<IfaceLinks, LoadError> {
    let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
    let mut out = IfaceLinks {
        name: name.to_owned(),
        links: Vec::new(),
        added_clsact: false,
        hooks: String::new(),
    };
    if !tcx {
        match tc::qdisc_add_clsact(name) {
            Ok(()) => out.added_clsact = true,
            // EEXIST: the interface already has clsact (someone else's): keep it.
            Err(e) => debug!(interface = name, error = %e, "clsact not added"),
        }
    }
    let tc_hook = if tcx { "tcx" } else { "tc clsact" };
    // Links of the netlink (clsact) kind have no fd to pin: they die with the agent.
    let pin = |hook: &str| {
        pins.filter(|_| tcx || mode == Mode::Xdp)
            .map(|p| p.link_path(ifindex, hook))
    };
    let mut hooks = Vec::new();
    let result = (|| -> Result<(), LoadError> {
        if mode == Mode::Xdp {
            let how = match xdp_attach {
                XdpAttach::Auto => XdpMode::Default,
                XdpAttach::Native => XdpMode::Driver,
                XdpAttach::Generic => XdpMode::Skb,
            };
            let p = xdp(ebpf)?;
            let id = p
                .attach(name, how)
                .map_err(link_err(names::XDP_INGRESS, name, "xdp"))?;
            let link = p
                .take_link(id)
                .map_err(link_err(names::XDP_INGRESS, name, "xdp"))?;
            let fd = fd_link(link, names::XDP_INGRESS, name, "xdp")?;
            out.links.push(keep(fd, pin("ingress"), name)?);
            hooks.push("xdp ingress".to_owned());
        } else {
            let p = classifier(ebpf, names::TC_INGRESS)?;
            let id = p.attach(name, TcAttachType::Ingress).map_err(link_err(
                names::TC_INGRESS,
                name,
                tc_hook,
            ))?;
            let link = p
                .take_link(id)
                .map_err(link_err(names::TC_INGRESS, name, tc_hook))?;
            if tcx {
                let fd = fd_link(link, names::TC_INGRESS, name, tc_hook)?;
                out.links.push(keep(fd, pin("ingress"), name)?);
            } else {
                out.links.push(Hold::Netlink(link));
            }
            hooks.push(format!("{tc_hook} ingress"));
        }
        let p = classifier(ebpf, names::TC_EGRESS)?;
        let id = p.attach(name, TcAttachType::Egress).map_err(link_err(
            names::TC_EGRESS,
            name,
            tc_hook,
        ))?;
        let link = p
            .take_link(id)
            .map_err(link_err(names::TC_EGRESS, name, tc_hook))?;
        if tcx {
            let fd = fd_link(link, names::TC_EGRESS, name, tc_hook)?;
            out.links.push(keep(fd, pin("egress"), name)?);
        } else {
            out.links.push(Hold::Netlink(link));
        }
        hooks.push(format!("{tc_hook} egress"));
        Ok(())
    })();
    out.hooks = hooks.join(", ");
    match result {
        Ok(()) => Ok(out),
        Err(e) => {
            // Leave nothing half-attached.
            detach_one(out);
            Err(e)
        }
    }
}

/// Takes over a link a previous agent pinned: its program is replaced with this
/// agent's (atomically) and the pin stays. `hook` is `ingress` or `egress`.
pub fn adopt_link(
    ebpf: &mut Ebpf,
    mode: Mode,
    hook: &str,
    path: &Path,
    interface: &str,
) -> Result<FdLink, LoadError> {
    let fd: FdLink = PinnedLink::from_pin(path)
        .map_err(|e| LoadError::Adopt {
            path: path.to_owned(),
            problem: e.to_string(),
        })?
        .into();
    let adopt_err = |e: String| LoadError::Adopt {
        path: path.to_owned(),
        problem: e,
    };
    if hook == "ingress" && mode == Mode::Xdp {
        let link = XdpLink::try_from(fd)
            .map_err(|e| adopt_err(format!("not an XDP link ({e}): the mode changed")))?;
        let p = xdp(ebpf)?;
        let id = p
            .attach_to_link(link)
            .map_err(|e| adopt_err(e.to_string()))?;
        let link = p.take_link(id).map_err(|e| adopt_err(e.to_string()))?;
        fd_link(link, names::XDP_INGRESS, interface, "xdp")
    } else {
        let name = if hook == "ingress" {
            names::TC_INGRESS
        } else {
            names::TC_EGRESS
        };
        let link = SchedClassifierLink::try_from(fd)
            .map_err(|e| adopt_err(format!("not a TCX link ({e}): the mode changed")))?;
        let p = classifier(ebpf, name)?;
        let id = p
            .attach_to_link(link)
            .map_err(|e| adopt_err(e.to_string()))?;
        let link = p.take_link(id).map_err(|e| adopt_err(e.to_string()))?;
        fd_link(link, name, interface, "tcx")
    }
}

/// The links of an interface taken over from a previous agent.
pub fn adopted(name: &str, links: Vec<(FdLink, PathBuf)>, hooks: String) -> IfaceLinks {
    IfaceLinks {
        name: name.to_owned(),
        links: links
            .into_iter()
            .map(|(l, p)| Hold::Fd(l, Some(p)))
            .collect(),
        added_clsact: false,
        hooks,
    }
}

/// Hands an interface's links over to the next agent: closes our fds, keeps the pins
/// (the programs stay attached).
pub fn hand_over(links: IfaceLinks) {
    for hold in links.links {
        match hold {
            // Closing our fd leaves the pinned link (and its program) attached.
            Hold::Fd(link, Some(_)) => drop(link),
            // Nothing to hand over: detached.
            other => drop(other),
        }
    }
}

/// Detaches one interface's programs: removes the pins and closes the link fds (the
/// last references). An interface that is already gone lost its links with it.
pub fn detach_one(links: IfaceLinks) {
    for hold in links.links {
        if let Hold::Fd(_, Some(p)) = &hold {
            if let Err(e) = std::fs::remove_file(p) {
                debug!(interface = %links.name, pin = %p.display(), error = %e, "unpin");
            }
        }
        drop(hold);
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
