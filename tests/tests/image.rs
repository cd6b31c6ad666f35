//! The container image (`deploy/image/build.sh`, what `cargo xtask image` runs): built
//! from the agent under test, run with podman (runc) in a test namespace with a
//! read-only root filesystem, every capability dropped but the unit's (`CAP_BPF`,
//! `CAP_NET_ADMIN`, `CAP_PERFMON`), and the runtime's default seccomp profile changed
//! in one point: `bpf(2)` is allowed with `CAP_BPF` (podman 4's profile allows it only
//! with `CAP_SYS_ADMIN`; newer runtimes' profiles do this themselves). Known UDP traffic
//! gives exact counts, and stopping the container (SIGINT through podman) flushes the
//! window and detaches the programs.
use std::{fs, path::PathBuf, process::Command};

use flowlog_tests::{
    agent::Wrapped, agent_bin, known, netns::assert_detached, require_root, Agent, Netns, VethPair,
};

const BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/image/build.sh");
const DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// An image built for this test run; removed on drop, with its scratch files.
struct Image {
    tag: String,
    dir: PathBuf,
}

impl Image {
    fn build() -> Image {
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is not installed (bash .ci/setup --tests installs podman and runc)"
        );
        let tag = format!("localhost/flowlog:test-{}", std::process::id());
        let out = Command::new("bash")
            .arg(BUILD)
            .arg(agent_bin())
            .arg(&tag)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "build.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let size: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("build.sh prints the image size");
        eprintln!("image {tag}: {size} bytes");
        let dir = std::env::temp_dir().join(format!("flowlog-image-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Image { tag, dir }
    }

    /// The runtime's default seccomp profile with `bpf` allowed when `CAP_BPF` is held
    /// (instead of only with `CAP_SYS_ADMIN`).
    fn seccomp_profile(&self) -> PathBuf {
        let text = fs::read_to_string(DEFAULT_SECCOMP)
            .unwrap_or_else(|e| panic!("reading {DEFAULT_SECCOMP}: {e}"));
        let mut profile: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rules = profile["syscalls"]
            .as_array_mut()
            .expect("syscalls array in the default profile");
        for rule in rules.iter_mut() {
            if let Some(names) = rule["names"].as_array_mut() {
                names.retain(|n| n != "bpf");
            }
        }
        rules.retain(|r| r["names"].as_array().is_none_or(|n| !n.is_empty()));
        rules.push(serde_json::json!({
            "names": ["bpf"],
            "action": "SCMP_ACT_ALLOW",
            "args": [],
            "includes": {"caps": ["CAP_BPF"]},
            "excludes": {}
        }));
        let path = self.dir.join("seccomp-bpf.json");
        fs::write(&path, serde_json::to_vec_pretty(&profile).unwrap()).unwrap();
        path
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--force", &self.tag])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn image_with_least_privilege_counts_exactly() {
    require_root();
    let image = Image::build();
    let seccomp = image.seccomp_profile();
    let a = Netns::new("img-a");
    let b = Netns::new("img-b");
    let v = VethPair::new(&a, &b, "img", 1);
    let sink = known::sink(&b, &v);
    let name = format!("flowlog-test-{}", std::process::id());
    let wrapper: Vec<String> = [
        "podman",
        "--runtime",
        "runc",
        "--cgroup-manager=cgroupfs",
        "run",
        "--rm",
        "--name",
        &name,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        // The container joins the test's network namespace.
        "--network",
        &format!("ns:/run/netns/{}", a.name()),
        "--read-only",
        "--security-opt",
        &format!("seccomp={}", seccomp.display()),
        "--cap-drop",
        "all",
        "--cap-add",
        "NET_ADMIN,BPF,PERFMON",
        &image.tag,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = Agent::start_wrapped(
        a.name(),
        &Wrapped {
            wrapper,
            bin: None,
            no_bin: true,
        },
        &["run", "--interface", &v.if_a, "--window", "2s"],
    );
    known::send(&a, &v, &sink);
    let recs = agent.stop();
    sink.finish();
    known::assert_exact(&recs, &v);
    assert_detached(a.name(), &v.if_a);
}
