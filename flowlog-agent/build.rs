//! Builds the eBPF object (`flowlog-ebpf`) for the BPF target with `aya-build`, so a
//! plain `cargo build` of the agent embeds the kernel programs it loads.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

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
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../flowlog-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "flowlog-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
