//! Builds the eBPF object (`flowlog-ebpf`) for the BPF target with `aya-build`, so a
//! plain `cargo build` of the agent embeds the kernel programs it loads.
//!
//! The object is built with the nightly pinned in `flowlog-ebpf/rust-toolchain.toml`
//! (`FLOWLOG_EBPF_TOOLCHAIN` overrides it) and linked by `bpf-linker`. Both must use
//! the same LLVM major; before building, this script checks that they do and fails
//! with both versions and the fix named, instead of bpf-linker's late and cryptic
//! `ERROR llvm: Invalid record`.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _};
use aya_build::{Package, Toolchain};

const PIN_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../flowlog-ebpf/rust-toolchain.toml"
);
const SETUP: &str = "bash .ci/setup";

/// The pinned toolchain: `FLOWLOG_EBPF_TOOLCHAIN`, else `channel` of the pin file.
fn pinned_toolchain() -> anyhow::Result<String> {
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-changed={PIN_FILE}");
    // The programs compile flowlog-common's ABI types in: a change there is a change
    // of the object.
    println!("cargo:rerun-if-changed=../flowlog-common/src");
    if let Some(tc) = env::var("FLOWLOG_EBPF_TOOLCHAIN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(tc);
    }
    let text = fs::read_to_string(PIN_FILE).with_context(|| format!("reading {PIN_FILE}"))?;
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("channel"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(|v| v.trim().trim_matches('"').to_string())
        .find(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("{PIN_FILE} has no `channel = \"...\"`"))
}

/// LLVM major version of `rustup run <toolchain> rustc -vV`.
fn toolchain_llvm(toolchain: &str) -> anyhow::Result<u32> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .context("running rustup (the eBPF object needs rustup and a pinned nightly)")?;
    if !out.status.success() {
        bail!(
            "the eBPF toolchain {toolchain} (pinned in flowlog-ebpf/rust-toolchain.toml) is not \
             installed; run `{SETUP}` (it installs it with rust-src and a matching bpf-linker)"
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .ok_or_else(|| anyhow!("`rustc +{toolchain} -vV` reports no LLVM version"))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// LLVM major that `bpf-linker` is dynamically linked against (`libLLVM.so.N`), if
/// `ldd` can tell; `None` for a statically linked one.
fn linker_llvm(linker: &Path) -> Option<u32> {
    let out = Command::new("ldd").arg(linker).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("libLLVM"))
        .filter_map(|rest| rest.trim_start_matches(['-', '.']).strip_prefix("so."))
        .find_map(|v| v.split('.').next()?.parse().ok())
}

fn check_pair(toolchain: &str) -> anyhow::Result<()> {
    let llvm = toolchain_llvm(toolchain)?;
    let Some(linker) = find_in_path("bpf-linker") else {
        bail!(
            "bpf-linker is not on PATH; run `{SETUP}` (it builds bpf-linker 0.13 against LLVM \
             {llvm}, the LLVM of the eBPF toolchain {toolchain})"
        );
    };
    println!("cargo:rerun-if-changed={}", linker.display());
    match linker_llvm(&linker) {
        Some(have) if have != llvm => bail!(
            "eBPF toolchain mismatch: the nightly {toolchain} uses LLVM {llvm} but {} is built \
             against LLVM {have}; the link would fail with `ERROR llvm: Invalid record`. Run \
             `{SETUP}` (it rebuilds bpf-linker for LLVM {llvm}), or pin a nightly with LLVM \
             {have} in flowlog-ebpf/rust-toolchain.toml",
            linker.display()
        ),
        Some(_) => Ok(()),
        None => {
            println!(
                "cargo:warning=could not tell which LLVM {} uses (statically linked?); it must be \
                 LLVM {llvm} like {toolchain}",
                linker.display()
            );
            Ok(())
        }
    }
}

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Userspace-only work (docs, unit tests of pure modules) without bpf-linker: the
        // agent then fails at start-up with a clear "eBPF object was not built" error.
        let obj = out_dir.join("flowlog");
        if !obj.exists() {
            fs::write(&obj, b"").context("writing placeholder eBPF object")?;
        }
    }
    let toolchain = pinned_toolchain()?;
    if !skip {
        check_pair(&toolchain)?;
    }
    // aya-build relays every line of the nested cargo as a `cargo:warning`, which cargo
    // replays on every later build: keep only its warnings and errors.
    env::set_var("CARGO_TERM_QUIET", "true");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../flowlog-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "flowlog-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
