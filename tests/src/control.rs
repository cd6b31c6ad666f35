//! The agent's control socket from a test: a private socket and state directory per
//! test (removed on drop), and the `flowlog create/start/stop/...` CLI run against it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::{agent_bin, Agent};

/// A temporary directory holding the control socket and the state directory.
pub struct Control {
    pub dir: PathBuf,
}

impl Control {
    pub fn new(tag: &str) -> Control {
        let dir = std::env::temp_dir().join(format!("flowlog-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Control { dir }
    }

    pub fn socket(&self) -> String {
        self.dir.join("flowlog.sock").display().to_string()
    }

    pub fn state_dir(&self) -> String {
        self.dir.join("state").display().to_string()
    }

    /// A file in the directory (outputs of instances).
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `flowlog run` arguments for the socket and the state directory.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "run".into(),
            "--socket".into(),
            self.socket(),
            "--state-dir".into(),
            self.state_dir(),
        ]
    }

    /// Starts `flowlog run` with this socket and state directory (and `extra`) in `ns`.
    pub fn start_agent(&self, ns: &str, extra: &[&str]) -> Agent {
        let mut args = self.run_args();
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Agent::start(ns, &args)
    }

    /// Runs `flowlog <args> --socket S` (outside any namespace: the socket is a file).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .args(["--socket", &self.socket()])
            .output()
            .expect("running flowlog")
    }

    /// As [`Control::cli`], panicking unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flowlog {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `flowlog create NAME --resource-type ENI --resource-id IFACE --window WINDOW`
    /// and `extra`, panicking unless it succeeds; returns stdout.
    pub fn create_eni(&self, name: &str, iface: &str, window: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "create",
            name,
            "--resource-type",
            "ENI",
            "--resource-id",
            iface,
            "--window",
            window,
        ];
        args.extend_from_slice(extra);
        self.ok(&args)
    }

    /// Sends a raw request line and returns the response line.
    pub fn raw(&self, line: &str) -> serde_json::Value {
        let mut s = UnixStream::connect(self.socket()).expect("connect to the control socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        let mut resp = String::new();
        BufReader::new(&s).read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response {resp:?}: {e}"))
    }

    /// `describe NAME` as JSON.
    pub fn describe(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["describe", name])).unwrap()
    }

    /// Waits until `describe NAME` lists exactly `interfaces` (sorted).
    pub fn wait_interfaces(&self, name: &str, interfaces: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut want: Vec<String> = interfaces.iter().map(|s| s.to_string()).collect();
        want.sort();
        loop {
            let d = self.describe(name);
            let mut got: Vec<String> = d["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            got.sort();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "flow log {name} covers {got:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
