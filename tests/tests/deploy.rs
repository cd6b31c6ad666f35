//! The systemd unit for gateway nodes (`deploy/systemd/flowlog.service`):
//!
//! * `systemd-analyze verify` accepts it;
//! * the agent run as an unprivileged user with exactly the unit's capabilities
//!   (`setpriv`: bounding, inheritable and ambient sets, no new privileges) attaches
//!   and counts known traffic exactly;
//! * with any one of those capabilities less it refuses to start, exit code 1, and the
//!   message names the missing capability.
//!
//! The capability list is read from the unit file itself, so the test follows it.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use flowlog_tests::{
    agent::{run_to_exit_wrapped, Wrapped},
    agent_bin, known,
    netns::assert_detached,
    require_root, Agent, Netns, VethPair,
};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/systemd/flowlog.service"
);
/// Where the unit expects the binary.
const UNIT_BIN: &str = "/usr/local/bin/flowlog";

fn unit_text() -> String {
    fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("reading {UNIT}: {e}"))
}

/// Values of `Key=` lines (space-separated words, all lines of that key).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The unit's capabilities, checked to be the same in the bounding and ambient sets.
fn unit_caps() -> Vec<String> {
    let text = unit_text();
    let mut bounding = unit_values(&text, "CapabilityBoundingSet");
    let mut ambient = unit_values(&text, "AmbientCapabilities");
    bounding.sort();
    ambient.sort();
    assert_eq!(
        bounding, ambient,
        "bounding and ambient sets of the unit differ"
    );
    assert!(!bounding.is_empty(), "the unit names no capability");
    bounding
}

/// A directory every user can read, holding a copy of the agent (the build tree may not
/// be reachable by an unprivileged user); removed on drop.
struct BinCopy(PathBuf);

impl BinCopy {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("flowlog-deploy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("flowlog");
        fs::copy(agent_bin(), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }
    fn bin(&self) -> PathBuf {
        self.0.join("flowlog")
    }
}

impl Drop for BinCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `setpriv` as user/group nobody (65534) holding exactly `caps` (`CAP_BPF` style).
fn setpriv(caps: &[String], bin: &Path) -> Wrapped {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    Wrapped {
        wrapper: vec![
            "setpriv".into(),
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            format!("--inh-caps=-all{list}"),
            format!("--ambient-caps=-all{list}"),
            format!("--bounding-set=-all{list}"),
            "--no-new-privs".into(),
        ],
        bin: Some(bin.to_path_buf()),
        no_bin: false,
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let text = unit_text();
    assert!(
        text.contains(&format!("ExecStart={UNIT_BIN} run")),
        "{text}"
    );
    // verify checks that ExecStart's binary exists: point it at the built agent.
    let dir = std::env::temp_dir().join(format!("flowlog-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("flowlog.service");
    fs::write(
        &unit,
        text.replace(UNIT_BIN, agent_bin().to_str().expect("utf-8 path")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("flowlog.service"),
        "systemd-analyze verify complained about the unit:\n{stderr}"
    );
    assert_eq!(unit_caps(), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    assert_eq!(unit_values(&text, "NoNewPrivileges"), ["yes"]);
    assert_eq!(unit_values(&text, "ProtectSystem"), ["strict"]);
}

#[test]
fn the_units_capabilities_alone_count_exactly() {
    require_root();
    let copy = BinCopy::new();
    let a = Netns::new("cap-a");
    let b = Netns::new("cap-b");
    let v = VethPair::new(&a, &b, "cap", 1);
    let sink = known::sink(&b, &v);
    let agent = Agent::start_wrapped(
        a.name(),
        &setpriv(&unit_caps(), &copy.bin()),
        &["run", "--interface", &v.if_a, "--window", "2s"],
    );
    known::send(&a, &v, &sink);
    let recs = agent.stop();
    sink.finish();
    known::assert_exact(&recs, &v);
    assert_detached(a.name(), &v.if_a);
}

#[test]
fn one_capability_less_is_refused_by_name() {
    require_root();
    let copy = BinCopy::new();
    let a = Netns::new("cap1-a");
    let b = Netns::new("cap1-b");
    let v = VethPair::new(&a, &b, "cp1", 1);
    let caps = unit_caps();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let out = run_to_exit_wrapped(
            a.name(),
            &setpriv(&fewer, &copy.bin()),
            &["run", "--interface", &v.if_a, "--window", "2s"],
        );
        assert_eq!(out.code(), Some(1), "without {missing}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("missing capabilities {missing} (effective set")),
            "without {missing}: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "without {missing}: {}", out.stdout);
        assert_detached(a.name(), &v.if_a);
    }
}
