//! Runs the `flowlog` binary inside a network namespace and collects its output.
//!
//! stdout must carry only JSON records, one per line; stderr carries logs, and a line
//! containing `collecting` says the programs are attached. The agent is stopped with
//! SIGINT and must then flush its last (partial) window and exit 0.
use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::record::Record;

/// How long the agent may take to attach, and to exit after SIGINT: 20 s, or
/// `$FLOWLOG_TEST_TIMEOUT` seconds (for slow or heavily loaded machines).
pub fn agent_timeout() -> Duration {
    std::env::var("FLOWLOG_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(20), Duration::from_secs)
}

/// The agent binary: `$FLOWLOG_BIN`, else `flowlog` next to the `deps/` directory the
/// test executable lives in (`target/<profile>/flowlog`).
pub fn agent_bin() -> PathBuf {
    let path = match std::env::var_os("FLOWLOG_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            let deps = exe.parent().expect("test executable has a directory");
            deps.parent()
                .expect("test executable is in target/<profile>/deps")
                .join("flowlog")
        }
    };
    if !path.is_file() {
        panic!(
            "agent binary {} not found: build the agent first: cargo build -p flowlog-agent \
             (or run cargo xtask test), or set FLOWLOG_BIN",
            path.display()
        );
    }
    path
}

/// How to run the agent: a wrapper that execs its last arguments (such as
/// `setpriv ...`) and the binary (default [`agent_bin`]).
#[derive(Clone, Debug, Default)]
pub struct Wrapped {
    pub wrapper: Vec<String>,
    pub bin: Option<PathBuf>,
    /// The wrapper starts the agent itself (a container image whose entry point is
    /// `flowlog`): only the arguments follow it, and the wrapper runs outside the
    /// namespace (`ip netns exec` gives it a mount namespace without cgroups; a
    /// container runtime joins the namespace by path itself).
    pub no_bin: bool,
}

impl Wrapped {
    pub fn none() -> Self {
        Self::default()
    }
}

/// `ip netns exec NS WRAPPER... BIN ARGS`.
fn wrapped_command(ns: &str, w: &Wrapped, args: &[&str]) -> Command {
    let mut cmd = if w.no_bin {
        let (program, rest) = w.wrapper.split_first().expect("a wrapper to run");
        let mut c = Command::new(program);
        c.args(rest);
        c
    } else {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .args(&w.wrapper)
            .arg(w.bin.clone().unwrap_or_else(agent_bin));
        c
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[derive(Default)]
struct Shared {
    records: Vec<Record>,
    bad_lines: Vec<String>,
    stderr: String,
}

/// BPF objects held by an agent process ([`Agent::bpf_fds`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BpfFds {
    pub maps: usize,
    pub programs: usize,
    pub links: usize,
}

/// A running agent; killed on drop if still running.
pub struct Agent {
    child: Option<Child>,
    desc: String,
    shared: Arc<Mutex<Shared>>,
    readers: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Spawns `flowlog <args>` in namespace `ns` and waits until it is collecting.
    pub fn start(ns: &str, args: &[&str]) -> Agent {
        let mut a = Agent::spawn(ns, args);
        a.wait_ready();
        a
    }

    /// Spawns `flowlog <args>` in namespace `ns` (`ip netns exec` execs the binary, so
    /// the child's pid is the agent's).
    pub fn spawn(ns: &str, args: &[&str]) -> Agent {
        Agent::spawn_wrapped(ns, &Wrapped::none(), args)
    }

    /// Spawns `WRAPPER... flowlog <args>` in `ns` and waits until it is collecting.
    pub fn start_wrapped(ns: &str, w: &Wrapped, args: &[&str]) -> Agent {
        let mut a = Agent::spawn_wrapped(ns, w, args);
        a.wait_ready();
        a
    }

    /// As [`Agent::spawn`], through a wrapper that execs the agent (so the pid stays
    /// the agent's).
    pub fn spawn_wrapped(ns: &str, w: &Wrapped, args: &[&str]) -> Agent {
        let desc = format!(
            "{} flowlog {} (netns {ns})",
            w.wrapper.join(" "),
            args.join(" ")
        );
        let mut child = wrapped_command(ns, w, args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let s1 = shared.clone();
        let out_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let mut s = s1.lock().unwrap();
                match Record::parse(&line) {
                    Ok(r) => s.records.push(r),
                    Err(e) => s.bad_lines.push(e),
                }
            }
        });
        let s2 = shared.clone();
        let err_reader = thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => s2
                        .lock()
                        .unwrap()
                        .stderr
                        .push_str(&String::from_utf8_lossy(&buf)),
                }
            }
        });
        Agent {
            child: Some(child),
            desc,
            shared,
            readers: vec![out_reader, err_reader],
        }
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Stderr captured so far.
    pub fn stderr(&self) -> String {
        self.shared.lock().unwrap().stderr.clone()
    }

    /// Records received so far.
    pub fn records(&self) -> Vec<Record> {
        self.shared.lock().unwrap().records.clone()
    }

    /// The BPF objects the agent process holds, from its fds' fdinfo (what a leak of
    /// maps, programs or links would show).
    pub fn bpf_fds(&self) -> BpfFds {
        let mut out = BpfFds::default();
        let dir = format!("/proc/{}/fdinfo", self.pid());
        for e in std::fs::read_dir(dir)
            .expect("the agent's fdinfo")
            .flatten()
        {
            let Ok(info) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if info.contains("link_type:") {
                out.links += 1;
            } else if info.contains("prog_type:") {
                out.programs += 1;
            } else if info.contains("map_type:") {
                out.maps += 1;
            }
        }
        out
    }

    /// The agent's process id (`ip netns exec` execs the binary in place).
    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("agent already stopped").id() as libc::pid_t
    }

    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: signalling our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Sends SIGHUP (policy reload) and waits (at most [`agent_timeout`]) until the
    /// agent logged its outcome: a new stderr line about the reload (`policy reloaded`,
    /// `policy reload failed`, ...). Returns the stderr lines logged since the signal.
    pub fn reload(&self) -> String {
        let is_reload = |l: &&str| l.contains("reload") || l.contains("SIGHUP");
        let before = self.stderr();
        let seen = before.lines().filter(is_reload).count();
        self.signal(libc::SIGHUP);
        let timeout = agent_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.stderr();
            if now.lines().filter(is_reload).count() > seen {
                return now[before.len()..].to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} logged nothing about a reload within {timeout:?} of SIGHUP; stderr:\n{now}",
                    self.desc
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (at most [`agent_timeout`]) for the stderr line saying it is collecting.
    pub fn wait_ready(&mut self) {
        let timeout = agent_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().lines().any(|l| l.contains("collecting")) {
                return;
            }
            let child = self.child.as_mut().expect("agent already stopped");
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Let the reader threads drain the pipes.
                self.child = None;
                self.join_readers();
                panic!(
                    "{} exited ({status}) before collecting; stderr:\n{}",
                    self.desc,
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not log `collecting` within {timeout:?}; stderr so far:\n{}",
                    self.desc,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_readers(&mut self) {
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }

    /// SIGKILLs the agent (nothing of it runs any more) and returns the records it
    /// printed before.
    pub fn kill(mut self) -> Vec<Record> {
        let mut child = self.child.take().expect("agent already stopped");
        let _ = child.kill();
        let _ = child.wait();
        self.join_readers();
        let s = self.shared.lock().unwrap();
        eprintln!("---- killed agent stderr ({}):\n{}", self.desc, s.stderr);
        s.records.clone()
    }

    /// Sends SIGINT, waits for exit status 0 (SIGKILL and panic after
    /// [`agent_timeout`]) and returns every record printed. Stderr and the records are
    /// echoed on the test's stderr (shown by the test harness when the test fails).
    pub fn stop(self) -> Vec<Record> {
        self.stop_with(libc::SIGINT)
    }

    /// As [`Agent::stop`] with another signal (SIGTERM, SIGUSR2).
    pub fn stop_with(mut self, sig: libc::c_int) -> Vec<Record> {
        let mut child = self.child.take().expect("agent already stopped");
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, sig) };
        let timeout = agent_timeout();
        let status = wait_timeout(&mut child, timeout);
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            self.join_readers();
            panic!(
                "{} did not exit within {timeout:?} of SIGINT; stderr:\n{}",
                self.desc,
                self.stderr()
            );
        };
        self.join_readers();
        let s = self.shared.lock().unwrap();
        eprintln!("---- agent stderr ({}):\n{}", self.desc, s.stderr);
        eprintln!("---- agent records ({}):", s.records.len());
        for r in &s.records {
            eprintln!("{r}");
        }
        assert!(
            s.bad_lines.is_empty(),
            "{} printed non-JSON lines on stdout: {:#?}",
            self.desc,
            s.bad_lines
        );
        assert!(
            status.success(),
            "{} exited with {status} after SIGINT; stderr:\n{}",
            self.desc,
            s.stderr
        );
        s.records.clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Outcome of an agent run that was expected to end on its own.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// Runs `flowlog <args>` in `ns` and waits for it to exit on its own (panics after
/// [`agent_timeout`], killing it).
pub fn run_to_exit(ns: &str, args: &[&str]) -> Exited {
    run_to_exit_wrapped(ns, &Wrapped::none(), args)
}

/// [`run_to_exit`] through a wrapper that execs the agent.
pub fn run_to_exit_wrapped(ns: &str, w: &Wrapped, args: &[&str]) -> Exited {
    let desc = format!(
        "{} flowlog {} (netns {ns})",
        w.wrapper.join(" "),
        args.join(" ")
    );
    let mut child = wrapped_command(ns, w, args)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {desc}: {e}"));
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let timeout = agent_timeout();
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{desc} was expected to exit but still ran after {timeout:?}; stderr:\n{}",
            err.join().unwrap_or_default()
        );
    };
    Exited {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
