//! Program entries: each hook tries the fast path of an established plain IPv4
//! stream ([`crate::fast`]); otherwise it parses the frame ([`crate::parse`]), applies
//! the security policy ([`crate::policy`]) and counts it in the window's flow table
//! ([`crate::flows`]). Also the maps every part uses: `CONFIG` (written by the agent)
//! and the per-CPU `COUNTERS` of data-path events (never a per-packet log).
use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use flowlog_common::{counter, direction, FlowKey};

use crate::{
    flows::{record, Recorded},
    parse::{parse, Packet, Skb, Xdp},
    policy::decide,
};

#[map(name = "CONFIG")]
pub(crate) static CONFIG: Array<u32> = Array::with_max_entries(flowlog_common::config::COUNT, 0);
#[map(name = "COUNTERS")]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Per-CPU scratch: a copy of the parsed frame (see `observe`) and the state of a
/// flow-table probe walk (see `flows::probe`).
#[map(name = "SCRATCH")]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub(crate) struct Scratch {
    pub(crate) p: Parsed,
    pub(crate) walk: crate::flows::ProbeWalk,
}

#[classifier]
pub fn flowlog_tc_ingress(ctx: TcContext) -> i32 {
    if observe(&Skb(&ctx), direction::IN) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

#[classifier]
pub fn flowlog_tc_egress(ctx: TcContext) -> i32 {
    if observe(&Skb(&ctx), direction::OUT) {
        TC_ACT_SHOT
    } else {
        TC_ACT_UNSPEC
    }
}

/// Does nothing: the baseline that `cargo xtask bench` subtracts from the observers'
/// cost. Never attached by the agent.
#[classifier]
pub fn flowlog_tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Does nothing: the XDP baseline of `cargo xtask bench`. Never attached by the agent.
#[xdp]
pub fn flowlog_xdp_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn flowlog_xdp_ingress(ctx: XdpContext) -> u32 {
    if observe(&Xdp(&ctx), direction::IN) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
pub(crate) fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot; BPF programs on one CPU do not preempt each other.
        unsafe { *p += 1 };
    }
}

/// What the parser learnt about one frame.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Parsed {
    pub(crate) key: FlowKey,
    /// IP-layer bytes of the wire packets this frame stands for.
    pub(crate) bytes: u64,
    pub(crate) packets: u64,
    pub(crate) tcp_flags: u8,
    /// Policy rule that decided (see `flowlog_common::policy::RULE_*`).
    pub(crate) rule_id: u32,
}

/// Counts the frame; returns true when an enforcing rule set rejected it (the
/// caller drops it). Anything that cannot be parsed is passed.
#[inline(always)]
fn observe<P: Packet>(pkt: &P, dir: u8) -> bool {
    bump(counter::SEEN);
    if crate::fast::counted(pkt, dir) {
        return false;
    }
    let Some(mut p) = parse(pkt, dir) else {
        bump(counter::UNPLACED);
        return false;
    };
    let drop = decide(&mut p);
    if record(&p) == Recorded::FirstSkip {
        pkt.warn_overflow(p.key.ifindex);
    }
    drop
}

/// Copies the frame's facts into this CPU's scratch slot. Read back from map memory
/// they are plain unknowns to the verifier, so the parse paths (each with its own
/// constants and packet pointers) meet in one state after the copy, and the flow
/// table's code is verified about once rather than once per parse path. (Only the
/// CPU-cache miss path pays for the copy.)
#[inline(always)]
pub(crate) fn to_scratch(p: &Parsed) -> Option<&'static Parsed> {
    let q = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; programs on one CPU do not preempt each other,
    // and nothing else uses the slot once this program returns.
    unsafe {
        let q = addr_of_mut!((*q).p);
        // Field by field: no temporary copy on the (512-byte) stack.
        write_volatile(addr_of_mut!((*q).key), p.key);
        write_volatile(addr_of_mut!((*q).bytes), p.bytes);
        write_volatile(addr_of_mut!((*q).packets), p.packets);
        write_volatile(addr_of_mut!((*q).tcp_flags), p.tcp_flags);
        write_volatile(addr_of_mut!((*q).rule_id), p.rule_id);
        Some(&*q)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
