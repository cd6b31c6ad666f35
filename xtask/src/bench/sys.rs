//! Namespaces, veth pairs, child processes and the small pieces of `/proc` the bench
//! reads. Everything that creates something has a guard that removes it on drop, so a
//! panic or Ctrl-C (which only sets [`STOP`]; every wait loop checks it) cleans up.
use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};

/// Set by SIGINT/SIGTERM: every loop of the bench stops at its next check and the
/// guards clean up on the way out.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps in short slices so that Ctrl-C is noticed quickly.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Runs `f` on a thread that entered network namespace `ns`. Sockets, interface names
/// and `/proc/thread-self/net` then refer to that namespace; the bench's other threads
/// stay where they are.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = File::open(ns_path(ns)).with_context(|| format!("opening {}", ns_path(ns)))?;
    // SAFETY: a valid namespace fd; CLONE_NEWNET only affects this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("setns into {ns}"));
    }
    Ok(())
}

/// Pins the calling thread to one CPU.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET/sched_setaffinity get
    // valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
        }
    }
    Ok(())
}

pub fn online_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// A network namespace, deleted (with the veth ends inside it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a per-namespace sysctl.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_netns(&self.name, || {
            fs::write(&path, value).with_context(|| format!("writing {path}"))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes namespaces left behind by bench runs that were killed (their pid is gone).
pub fn remove_stale_namespaces(prefix: &str) {
    let Ok(entries) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

/// The bench's two namespaces joined by veth pairs: pair `k` has
/// `10.201.k.1` in `S` (sender) and `10.201.k.2` in `R` (receiver).
pub struct Topology {
    pub sender: Netns,
    pub receiver: Netns,
    pub pairs: Vec<Pair>,
}

/// One veth pair of the [`Topology`].
pub struct Pair {
    pub index: u8,
    pub if_sender: String,
    pub if_receiver: String,
}

impl Pair {
    pub fn sender_mac(&self) -> [u8; 6] {
        [0x02, 0xfb, 0, 0, self.index, 0x01]
    }
    pub fn receiver_mac(&self) -> [u8; 6] {
        [0x02, 0xfb, 0, 0, self.index, 0x02]
    }
    pub fn sender_ip(&self) -> [u8; 4] {
        [10, 201, self.index, 1]
    }
    pub fn receiver_ip(&self) -> [u8; 4] {
        [10, 201, self.index, 2]
    }
}

/// Destination port of the bench traffic: a UDP socket in `R` that is never read
/// (so the datagrams traverse the whole receive path and no ICMP comes back).
pub const SINK_PORT: u16 = 9;

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Topology {
    pub fn create(prefix: &str, pairs: u8) -> Result<Topology> {
        let pid = std::process::id();
        let sender = Netns::create(format!("{prefix}{pid}-s"))?;
        let receiver = Netns::create(format!("{prefix}{pid}-r"))?;
        for ns in [&sender, &receiver] {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        let mut out = Vec::new();
        for index in 0..pairs {
            let pair = Pair {
                index,
                if_sender: format!("flbs{pid:x}{index}"),
                if_receiver: format!("flbr{pid:x}{index}"),
            };
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &pair.if_sender,
                    "address",
                    &mac_str(pair.sender_mac()),
                    "netns",
                    &sender.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &pair.if_receiver,
                    "address",
                    &mac_str(pair.receiver_mac()),
                    "netns",
                    &receiver.name,
                ],
            )?;
            for (ns, ifname, ip) in [
                (&sender, &pair.if_sender, pair.sender_ip()),
                (&receiver, &pair.if_receiver, pair.receiver_ip()),
            ] {
                // No IPv6: nothing (DAD, MLD, RS) but the bench traffic crosses.
                ns.sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "1")?;
                ns.sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "0")?;
                let addr = format!("{}.{}.{}.{}/24", ip[0], ip[1], ip[2], ip[3]);
                ns.ip(&["addr", "add", &addr, "dev", ifname])?;
                ns.ip(&["link", "set", ifname, "up"])?;
            }
            out.push(pair);
        }
        Ok(Topology {
            sender,
            receiver,
            pairs: out,
        })
    }
}

/// Datagrams that reached UDP in namespace `ns` (delivered, dropped at a full socket
/// buffer, or without a socket): `InDatagrams + InErrors + NoPorts` of `Udp:`.
pub fn udp_received(ns: &str) -> Result<u64> {
    let snmp = in_netns(ns, || {
        fs::read_to_string("/proc/thread-self/net/snmp").context("reading net/snmp")
    })?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(head), Some(vals)) = (lines.next(), lines.next()) else {
        bail!("no Udp: lines in net/snmp");
    };
    let mut total = 0u64;
    for (k, v) in head.split_whitespace().zip(vals.split_whitespace()) {
        if matches!(k, "InDatagrams" | "InErrors" | "NoPorts") {
            total += v.parse::<u64>().context("parsing net/snmp")?;
        }
    }
    Ok(total)
}

/// A child process, stopped (SIGINT, then SIGKILL) when dropped. Its stderr lines are
/// collected by a reader thread.
pub struct Proc {
    pub name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let lines = self.log_lines();
        let start = lines.len().saturating_sub(15);
        lines[start..].join("\n")
    }

    /// Waits until a stderr line satisfies `pred`; fails if the process exits first.
    pub fn wait_log(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            check_stop()?;
            if self.log_lines().iter().any(|l| pred(l)) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > end {
                bail!(
                    "{}: no {what} within {timeout:?}; stderr:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `cond` holds; fails if the process exits first.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(u32) -> bool,
    ) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            check_stop()?;
            if cond(self.pid()) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > end {
                bail!("{}: no {what} within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            // Let the reader thread collect the last lines.
            thread::sleep(Duration::from_millis(50));
            bail!("{} exited ({st}); stderr:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGINT, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.child.try_wait()? {
            return Ok(st);
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        Ok(self.child.wait()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop(Duration::from_secs(10));
    }
}

/// `VmHWM` (peak resident set) of a process, in bytes.
pub fn vm_hwm(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmHWM:") {
            let kb: u64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .context("parsing VmHWM")?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmHWM in /proc/{pid}/status")
}

/// Sum of `memlock` over the distinct BPF maps a process holds (from
/// `/proc/PID/fdinfo`): the kernel memory charged for its maps.
pub fn bpf_map_memlock(pid: u32) -> Result<(u64, usize)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(info) = fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
            if seen.insert(id) {
                total += memlock;
            }
        }
    }
    Ok((total, seen.len()))
}

/// Whether namespace `ns` holds a packet socket (softflowd's libpcap capture), from
/// `/proc/PID/net/packet` of a process inside it.
pub fn has_packet_socket(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/net/packet")).is_ok_and(|s| s.lines().count() > 1)
}

/// Time on CPU (ns) of a task, from `<proc dir>/schedstat`.
pub fn task_runtime_ns(proc_dir: &str) -> Result<u64> {
    let s = fs::read_to_string(format!("{proc_dir}/schedstat"))
        .with_context(|| format!("reading {proc_dir}/schedstat"))?;
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("parsing schedstat")
}

/// `/proc/PID` of `ksoftirqd/<cpu>`: softirq work deferred from the sending thread
/// runs there.
pub fn ksoftirqd(cpu: usize) -> Option<String> {
    let want = format!("ksoftirqd/{cpu}");
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let dir = e.path();
        let comm = fs::read_to_string(dir.join("comm")).ok()?;
        (comm.trim() == want).then(|| dir.to_string_lossy().into_owned())
    })
}
