//! `.ci/setup` refuses a mismatched eBPF toolchain pair with an explanation, instead
//! of letting the eBPF link fail later with `ERROR llvm: Invalid record`.
//!
//! A "nightly" here is a fake toolchain linked into rustup (`rustup toolchain link`)
//! whose `rustc -vV` reports the LLVM version the test wants; `FLOWLOG_EBPF_TOOLCHAIN`
//! points `.ci/setup` at it instead of the pin. Nothing is installed.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A rustup toolchain whose rustc says it uses LLVM `major`; unlinked on drop.
struct FakeNightly {
    name: String,
    dir: PathBuf,
}

impl FakeNightly {
    fn new(major: u32) -> Self {
        let name = format!("flowlog-test-llvm{major}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("lib")).unwrap();
        let rustc = dir.join("bin/rustc");
        fs::write(
            &rustc,
            format!(
                "#!/bin/sh\necho 'rustc 1.101.0-nightly (0123456 2026-12-01)'\n\
                 echo 'binary: rustc'\necho 'host: x86_64-unknown-linux-gnu'\n\
                 echo 'release: 1.101.0-nightly'\necho 'LLVM version: {major}.1.0'\n"
            ),
        )
        .unwrap();
        fs::set_permissions(&rustc, fs::Permissions::from_mode(0o755)).unwrap();
        let st = Command::new("rustup")
            .args(["toolchain", "link", &name])
            .arg(&dir)
            .status()
            .expect("rustup is needed to build flowlog");
        assert!(st.success(), "rustup toolchain link");
        Self { name, dir }
    }

    /// `bash .ci/setup ARGS` with this toolchain as the eBPF toolchain.
    fn setup(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = Command::new("bash")
            .arg(root().join(".ci/setup"))
            .args(args)
            .env("FLOWLOG_EBPF_TOOLCHAIN", &self.name)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), all)
    }
}

impl Drop for FakeNightly {
    fn drop(&mut self) {
        let _ = Command::new("rustup")
            .args(["toolchain", "uninstall", &self.name])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn assert_explains(out: &str, llvm: u32) {
    for needle in [
        "setup: error: eBPF toolchain mismatch:".to_string(),
        format!("uses LLVM {llvm}"),
        "(from FLOWLOG_EBPF_TOOLCHAIN)".to_string(),
        "ERROR llvm: Invalid record".to_string(),
        "set 'channel' in flowlog-ebpf/rust-toolchain.toml".to_string(),
        "then run: bash .ci/setup".to_string(),
    ] {
        assert!(out.contains(&needle), "missing {needle:?} in:\n{out}");
    }
}

/// `--check` compares the nightly's LLVM with the installed bpf-linker's (or notes
/// its absence) and installs nothing.
#[test]
fn check_refuses_a_nightly_whose_llvm_differs_from_bpf_linker() {
    let fake = FakeNightly::new(23);
    let (code, out) = fake.setup(&["--check"]);
    assert_eq!(code, Some(1), "{out}");
    assert_explains(&out, 23);
    assert!(
        out.contains("is built against LLVM 22") || out.contains("is not installed"),
        "{out}"
    );
}

/// Setup proper stops before installing anything when no bpf-linker 0.13 can match.
#[test]
fn setup_refuses_an_llvm_that_bpf_linker_does_not_support() {
    let fake = FakeNightly::new(20);
    let (code, out) = fake.setup(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert_explains(&out, 20);
    assert!(out.contains("supports only LLVM 21, 22, 23"), "{out}");
    assert!(!out.contains("installing"), "{out}");
}

/// Today's nightly channel is LLVM 23 and Debian has no llvm-23-dev: setup says so.
#[test]
fn setup_refuses_an_llvm_that_debian_cannot_provide() {
    let policy = Command::new("apt-cache")
        .args(["policy", "llvm-23-dev"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if policy.contains("Candidate: 1") {
        eprintln!("llvm-23-dev is installable here: setup would build a matching bpf-linker");
        return;
    }
    let fake = FakeNightly::new(23);
    let (code, out) = fake.setup(&[]);
    assert_eq!(code, Some(1), "{out}");
    assert_explains(&out, 23);
    assert!(out.contains("Debian has no llvm-23-dev"), "{out}");
    assert!(!out.contains("setup: ok"), "{out}");
}
