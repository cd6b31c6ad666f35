//! The flowlog agent: loads the eBPF programs, attaches them to interfaces, drains
//! the flow maps at every capture-window boundary and emits flow log records.
pub mod agent;
pub mod batch;
pub mod config;
pub mod drain;
pub mod instance;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod loader;
pub mod metrics;
pub mod paths;
pub mod pin;
pub mod policy;
pub mod privilege;
pub mod rcu;
pub mod record;
pub mod sink;
pub mod window;

/// The eBPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog"))
}
