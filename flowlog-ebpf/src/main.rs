//! flowlog's kernel side: TC (ingress/egress) and XDP (ingress) observers that count
//! every packet into per-stream counters.
//!
//! ```text
//!             wire                                                 host stack
//!  ──frame──▶ [XDP flowlog_xdp_ingress] ─▶ [TC ingress flowlog_tc_ingress] ─▶ ...
//!  ◀─frame─── [TC egress flowlog_tc_egress] ◀──────────────────────────────── ...
//!                        │ parse: Ethernet ▸ 802.1Q/802.1ad ▸ IPv4/IPv6 (+ext hdrs) ▸ L4 ports
//!                        │ policy: binding ▸ verdict cache / LPM + rule walk / conntrack
//!                        ▼
//!  CONFIG[GENERATION] ─▶ CACHE[cpu, gen] (512 hot streams of this CPU, plain adds)
//!                        │  miss ▼
//!                        INDEX[gen half]  hash index: 8-byte entries, 2 per stream, linear
//!                        │  probes ≤ 16, CAS claim ─▶ TABLE[gen half]  FlowSlot{key, stats},
//!                        │  slots in placement order (FILL[gen]), atomic adds; both
//!                        │  BPF_F_MMAPABLE arrays the agent reads in place
//!                        │  no entry ▼
//!                        FLOWS_<gen>  overflow hash map           FlowKey ─▶ FlowStats
//!                        │  new stream: IFACES (selection) ▸ PATH_CIDRS + PATH_RULES (path)
//!                        │  FILL[gen] ≥ CONFIG[MAX_FLOWS]? ─▶ SKIPPED_<gen> (distinct skipped streams)
//!                        │          SKIP_STATS {ifindex, gen} (skipped packets/bytes)
//!  FRAGS (LRU): ports of first fragments, for the later fragments of a datagram
//!  COUNTERS (per-CPU): parse errors and map events, never a per-packet log
//! ```
//!
//! Modules: [`prog`] (entries, `CONFIG`, `COUNTERS`), [`fast`] (the established plain
//! IPv4 stream's path), [`parse`], [`policy`],
//! [`flows`], [`select`] (what the active flow logs select; traffic_path).
//!
//! The programs observe: every path returns `TC_ACT_UNSPEC` (continue with the next
//! program / default action) or `XDP_PASS`, whatever the packet looks like, except a
//! packet that an enforcing rule set rejects (`TC_ACT_SHOT` / `XDP_DROP`).
//!
//! Window switch: the agent flips `CONFIG[GENERATION]` and then waits for an RCU grace
//! period. A program reads the generation once, at its start, and runs entirely inside
//! one RCU read-side section, so after the grace period no program can still write the
//! old generation's maps, and the agent drains them while nothing races with it.
//!
//! Counting: a GSO/GRO super-packet of N segments counts N packets and the IP bytes of
//! N wire packets (`IP length + (N-1) * (IP + L4 header length)`). Bytes are IP-layer
//! bytes (IPv4 total length, IPv6 40 + payload length), never Ethernet padding.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// `bpf_target_arch` is set by aya-build (the architecture the programs run on).
#![allow(unexpected_cfgs)]

#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod flows;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod policy;
#[cfg(target_arch = "bpf")]
mod prog;
#[cfg(target_arch = "bpf")]
mod select;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // The programs only build for the BPF target (from flowlog-agent's build.rs).
}
