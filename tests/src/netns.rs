//! Network namespaces, veth pairs and namespace-bound threads.
//!
//! Every name carries the test's short tag and the process id so that tests running in
//! parallel (threads of one test binary, or several binaries) never collide. Guards
//! delete what they created on drop, also when the test panics.
use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    panic,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::{self, JoinHandle},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

fn describe(cmd: &str, args: &[&str], out: &Output) -> String {
    format!(
        "`{cmd} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command, panicking with its output unless it exits 0.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"));
    if !out.status.success() {
        panic!("{}", describe(cmd, args, &out));
    }
    out
}

/// Runs `args` inside namespace `ns` (`ip netns exec`), panicking with stderr unless it
/// exits 0.
pub fn ns_exec(ns: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Like [`ns_exec`] but returns the output whatever the exit status.
pub fn ns_exec_unchecked(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip netns exec {ns}`: {e}"))
}

/// Stdout of [`ns_exec`] as a string.
pub fn ns_exec_stdout(ns: &str, args: &[&str]) -> String {
    String::from_utf8_lossy(&ns_exec(ns, args).stdout).into_owned()
}

/// A network namespace that is deleted when the guard is dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fl-<tag>-<pid>-<n>` and brings its loopback up.
    pub fn new(tag: &str) -> Netns {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("fl-{tag}-{}-{n}", std::process::id());
        // A namespace left over by a killed run of a process with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// [`ns_exec`] in this namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        ns_exec(&self.name, args)
    }

    /// Sets a sysctl inside this namespace (only per-netns sysctls make sense).
    pub fn sysctl(&self, key_value: &str) {
        self.exec(&["sysctl", "-qw", key_value]);
    }

    /// Disables IPv6 on `ifname` so that the kernel sends nothing on its own there
    /// (no DAD, MLD or router solicitations).
    pub fn disable_ipv6(&self, ifname: &str) {
        self.sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6=1"));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Interface name `fl<tag><pid hex><idx><side>`, at most 15 characters.
pub fn ifname(tag: &str, idx: u8, side: char) -> String {
    let name = format!("fl{tag}{:x}{idx}{side}", std::process::id());
    assert!(
        name.len() <= 15,
        "interface name {name} too long: use a tag of at most 4 characters"
    );
    name
}

/// A veth pair with one end in namespace A and the other in namespace B.
///
/// Addresses: `10.200.<idx>.1/24` (A) and `.2` (B); with IPv6 also `fd00:<idx>::1/64`
/// and `::2` (no DAD). Without IPv6 the protocol is disabled on both ends. Neighbour
/// entries are static (permanent) on both sides, so no ARP or neighbour discovery
/// packet ever shares an address pair with test traffic.
#[derive(Debug, Clone)]
pub struct VethPair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    pub mac_a: String,
    pub mac_b: String,
    pub v4_a: Ipv4Addr,
    pub v4_b: Ipv4Addr,
    pub v6_a: Option<Ipv6Addr>,
    pub v6_b: Option<Ipv6Addr>,
}

impl VethPair {
    /// IPv4-only pair (IPv6 disabled on both ends).
    pub fn new(a: &Netns, b: &Netns, tag: &str, idx: u8) -> VethPair {
        Self::create(a, b, tag, idx, false)
    }

    /// Dual-stack pair.
    pub fn dual_stack(a: &Netns, b: &Netns, tag: &str, idx: u8) -> VethPair {
        Self::create(a, b, tag, idx, true)
    }

    fn create(a: &Netns, b: &Netns, tag: &str, idx: u8, ipv6: bool) -> VethPair {
        let if_a = ifname(tag, idx, 'a');
        let if_b = ifname(tag, idx, 'b');
        let mac_a = format!("02:f1:00:00:{idx:02x}:01");
        let mac_b = format!("02:f1:00:00:{idx:02x}:02");
        run(
            "ip",
            &[
                "link",
                "add",
                &if_a,
                "address",
                &mac_a,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &if_b,
                "address",
                &mac_b,
                "netns",
                b.name(),
            ],
        );
        let v4_a = Ipv4Addr::new(10, 200, idx, 1);
        let v4_b = Ipv4Addr::new(10, 200, idx, 2);
        let (v6_a, v6_b) = if ipv6 {
            (
                Some(format!("fd00:{idx}::1").parse::<Ipv6Addr>().unwrap()),
                Some(format!("fd00:{idx}::2").parse::<Ipv6Addr>().unwrap()),
            )
        } else {
            (None, None)
        };
        let sides = [
            (a, &if_a, v4_a, v6_a, v4_b, v6_b, &mac_b),
            (b, &if_b, v4_b, v6_b, v4_a, v6_a, &mac_a),
        ];
        for (ns, ifn, v4, v6, peer_v4, peer_v6, peer_mac) in sides {
            if !ipv6 {
                ns.disable_ipv6(ifn);
            }
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", ifn]);
            if let Some(v6) = v6 {
                ns.exec(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    ifn,
                    "nodad",
                ]);
            }
            ns.exec(&["ip", "link", "set", ifn, "up"]);
            ns.exec(&[
                "ip",
                "neigh",
                "replace",
                &peer_v4.to_string(),
                "lladdr",
                peer_mac,
                "dev",
                ifn,
                "nud",
                "permanent",
            ]);
            if let Some(peer_v6) = peer_v6 {
                ns.exec(&[
                    "ip",
                    "-6",
                    "neigh",
                    "replace",
                    &peer_v6.to_string(),
                    "lladdr",
                    peer_mac,
                    "dev",
                    ifn,
                    "nud",
                    "permanent",
                ]);
            }
        }
        VethPair {
            ns_a: a.name().to_string(),
            ns_b: b.name().to_string(),
            if_a,
            if_b,
            mac_a,
            mac_b,
            v4_a,
            v4_b,
            v6_a,
            v6_b,
        }
    }

    /// IPv6 address of side A (panics for an IPv4-only pair).
    pub fn v6a(&self) -> Ipv6Addr {
        self.v6_a.expect("pair was created without IPv6")
    }

    /// IPv6 address of side B (panics for an IPv4-only pair).
    pub fn v6b(&self) -> Ipv6Addr {
        self.v6_b.expect("pair was created without IPv6")
    }
}

/// Moves the calling thread into the network namespace `ns` (by name).
pub fn enter_netns(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
    // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's netns.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!("setns({path}): {}", std::io::Error::last_os_error());
    }
}

/// Runs `f` on a new thread that first enters namespace `ns`. Sockets created by `f`
/// belong to that namespace for their whole life, whichever thread uses them later.
pub fn in_netns<T, F>(ns: &str, f: F) -> JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.to_string();
    thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            enter_netns(&ns);
            f()
        })
        .expect("spawning a thread")
}

/// [`in_netns`] and wait for the result, re-raising a panic of `f`.
pub fn with_netns<T, F>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    in_netns(ns, f)
        .join()
        .unwrap_or_else(|e| panic::resume_unwind(e))
}

/// Whether `ip -d link show` output reports an XDP program (`xdp`/`xdpgeneric`/...
/// after the MTU, or a `prog/xdp` line).
pub fn shows_xdp(ip_link: &str) -> bool {
    ip_link.split_whitespace().any(|t| {
        matches!(
            t,
            "xdp" | "xdpgeneric" | "xdpdrv" | "xdpoffload" | "xdpmulti"
        ) || t.starts_with("prog/xdp")
    })
}

/// Whether an XDP program is attached to `ifname` in namespace `ns`.
pub fn has_xdp(ns: &str, ifname: &str) -> bool {
    shows_xdp(&ns_exec_stdout(
        ns,
        &["ip", "-d", "link", "show", "dev", ifname],
    ))
}

/// Panics unless no flowlog program is left on `ifname` after the agent stopped: no tc
/// filter on ingress or egress, no clsact qdisc, no XDP program, no TCX program.
pub fn assert_detached(ns: &str, ifname: &str) {
    for hook in ["ingress", "egress"] {
        let out = ns_exec_stdout(ns, &["tc", "filter", "show", "dev", ifname, hook]);
        assert!(
            out.trim().is_empty(),
            "tc {hook} filters left on {ifname} after the agent stopped:\n{out}"
        );
    }
    let qdisc = ns_exec_stdout(ns, &["tc", "qdisc", "show", "dev", ifname]);
    assert!(
        !qdisc.contains("clsact"),
        "clsact qdisc left on {ifname} after the agent stopped:\n{qdisc}"
    );
    let link = ns_exec_stdout(ns, &["ip", "-d", "link", "show", "dev", ifname]);
    assert!(
        !shows_xdp(&link),
        "XDP program left on {ifname} after the agent stopped:\n{link}"
    );
    let ifname_owned = ifname.to_string();
    let tcx = with_netns(ns, move || {
        use aya::programs::{tc::TcAttachType, SchedClassifier};
        let mut left = Vec::new();
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&ifname_owned, hook)
                .unwrap_or_else(|e| panic!("querying TCX {hook:?} on {ifname_owned}: {e}"));
            for p in progs {
                left.push(format!(
                    "{hook:?}: id {} name {:?}",
                    p.id(),
                    p.name_as_str()
                ));
            }
        }
        left
    });
    assert!(
        tcx.is_empty(),
        "TCX programs left on {ifname} after the agent stopped: {tcx:?}"
    );
}

/// A bpf filesystem mounted on a fresh directory for one test (`--pin-dir`); unmounted
/// and removed on drop. (`ip netns exec` remounts /sys, so /sys/fs/bpf is no bpffs
/// inside it, while this mount is visible there.)
pub struct BpfFs {
    pub dir: std::path::PathBuf,
}

impl BpfFs {
    pub fn new(tag: &str) -> BpfFs {
        let dir = std::env::temp_dir().join(format!("flowlog-bpffs-{tag}-{}", std::process::id()));
        let _ = Command::new("umount").arg(&dir).output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run("mount", &["-t", "bpf", "bpf", dir.to_str().unwrap()]);
        BpfFs { dir }
    }

    /// The pin directory to pass to the agent.
    pub fn pin_dir(&self) -> String {
        self.dir.join("flowlog").display().to_string()
    }

    /// Files pinned under the pin directory (recursively).
    pub fn pinned(&self) -> Vec<String> {
        fn walk(d: &std::path::Path, out: &mut Vec<String>) {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p, out);
                    } else {
                        out.push(p.display().to_string());
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.join("flowlog"), &mut out);
        out.sort();
        out
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
