//! The fast path of the common packet: IPv4 without options, not a fragment, one
//! wire packet (no GSO), TCP without FIN/RST or UDP, no rule set bound anywhere, of a
//! stream this CPU's cache holds in the current window. It is read in place behind
//! one bounds check and added to the cache slot without building the 48-byte stream
//! key: the slot's key is compared with the words that key would have, and the slot
//! is the one the full path would pick ([`crate::flows::cache_index_of`] over the same
//! words). Anything else, and every cache miss, takes the full path (`parse` ▸
//! `policy` ▸ `flows`), which counts the packet the same way: the fast path only
//! skips work, never decides differently.
use core::ptr::read_volatile;

use flowlog_common::{action, config, family, key_flags, CACHE_SLOTS, TRAFFIC_PATH_UNCLASSIFIED};

use crate::{
    flows::{cache_index_of, CACHE},
    parse::{Packet, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST},
    prog::CONFIG,
};

/// Ethernet, an IPv4 header without options and a TCP header's fixed 20 bytes (a UDP
/// packet needs only 42, but shorter frames are rare: they take the full path).
const FAST_LEN: usize = 14 + 20 + 20;
/// `ETH_P_IP` as a little-endian load of the wire's two bytes reads it.
const ETH_P_IP_WIRE: u32 = 0x0008;

/// Counts the packet in this CPU's cache if it is a fast-path packet whose stream the
/// cache holds; false: nothing was counted, take the full path.
#[inline(always)]
pub(crate) fn counted<P: Packet>(pkt: &P, dir: u8) -> bool {
    let (start, end) = pkt.bounds();
    if start + FAST_LEN > end {
        return false;
    }
    // SAFETY: `FAST_LEN` bytes from `start` are in the frame (checked above); plain
    // loads at any offset, as in `Skb::load`.
    let word = |off: usize| unsafe { core::ptr::read((start + off) as *const u32) };
    // Bytes 12-15: EtherType, IPv4 version/IHL, TOS (little-endian loads of wire
    // bytes throughout).
    let w12 = word(12);
    // 16-19: total length, identification; 20-23: fragment field, TTL, protocol.
    let w16 = word(16);
    let w20 = word(20);
    let proto = (w20 >> 24) & 0xff;
    let tot_len = ((w16 & 0xff) << 8) | ((w16 >> 8) & 0xff);
    let l4_min = if proto == IPPROTO_TCP as u32 { 40 } else { 28 };
    // One test for: IPv4 with a 20-byte header; MF clear and offset 0 (DF may be
    // set); TCP or UDP; the transport header within the IP length (the full path's
    // `avail` test).
    let plain = (w12 & 0x00ff_ffff) == (ETH_P_IP_WIRE | 0x45 << 16)
        && (w20 & 0xff3f) == 0
        && (proto == IPPROTO_TCP as u32 || proto == IPPROTO_UDP as u32)
        && tot_len >= l4_min;
    if !plain {
        return false;
    }
    let tcp_flags = if proto == IPPROTO_TCP as u32 {
        // SAFETY: offset 47 < FAST_LEN.
        unsafe { core::ptr::read((start + 47) as *const u8) }
    } else {
        0
    };
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 || pkt.segments() > 1 {
        return false;
    }
    // No rule set bound: the full path's verdict is ACCEPT with no rule.
    if CONFIG.get(config::POLICY_BOUND).is_none_or(|n| *n != 0) {
        return false;
    }
    let counter = match CONFIG.get(config::GENERATION) {
        Some(g) => *g,
        None => return false,
    };
    let (saddr, daddr) = (word(26), word(30));
    // Ports in host order, source in the low half (the key's word 9).
    let ports = word(34).swap_bytes().rotate_left(16);
    let ifindex = pkt.ifindex();
    // The key's word 10: protocol, family, direction, action.
    let w10 =
        proto | (family::IPV4 as u32) << 8 | (dir as u32) << 16 | (action::ACCEPT as u32) << 24;
    let slot =
        (counter & 1) * CACHE_SLOTS + cache_index_of(ifindex, saddr, 0, daddr, 0, ports, w10);
    let Some(c) = CACHE.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: this CPU's slot (see `flows::record`).
    let c = unsafe { &mut *c };
    if c.tag != counter.wrapping_add(1) {
        return false;
    }
    // The key the full path would build, as its six 8-byte words (an IPv4 address
    // fills the first 4 of its 16 bytes; flags: ports known; path unclassified).
    let q = &c.key as *const flowlog_common::FlowKey as *const u64;
    // SAFETY: words `< 6` of the 48-byte, 8-aligned key in the slot.
    let k = |i: usize| unsafe { read_volatile(q.add(i)) };
    let w11 = key_flags::PORTS as u64 | (TRAFFIC_PATH_UNCLASSIFIED as u64) << 8;
    let differs = (k(0) ^ (ifindex as u64 | (saddr as u64) << 32))
        | k(1)
        | (k(2) ^ (daddr as u64) << 32)
        | k(3)
        | (k(4) ^ (ports as u64) << 32)
        | (k(5) ^ (w10 as u64 | w11 << 32));
    if differs != 0 {
        return false;
    }
    c.packets += 1;
    c.bytes += tot_len as u64;
    c.tcp_flags |= tcp_flags;
    c.rule_id = flowlog_common::policy::RULE_NONE;
    true
}
