//! The fast path of the common packet: IPv4 without options and not a fragment, or
//! IPv6 without extension headers; one wire packet (no GSO); TCP without FIN/RST or
//! UDP; no rule set bound anywhere; of a
//! stream this CPU's cache holds in the current window. It is read in place behind
//! one bounds check and added to the cache slot without building the 48-byte stream
//! key: the slot's key is compared with the words that key would have, and the slot
//! is the one the full path would pick ([`crate::flows::cache_index_of`] over the same
//! words). Anything else, and every cache miss, takes the full path (`parse` ▸
//! `policy` ▸ `flows`), which counts the packet the same way: the fast path only
//! skips work, never decides differently.
use core::ptr::read_volatile;

use flowlog_common::{action, config, family, key_flags, TRAFFIC_PATH_UNCLASSIFIED};

use crate::{
    flows::{cache_index_of, cache_slot},
    parse::{Packet, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST},
    prog::CONFIG,
};

/// Ethernet, an IPv4 header without options and a TCP header's fixed 20 bytes (a UDP
/// packet needs only 42, but shorter frames are rare: they take the full path).
const FAST_LEN_V4: usize = 14 + 20 + 20;
/// Ethernet, the IPv6 header (no extension header) and 20 bytes of TCP.
const FAST_LEN_V6: usize = 14 + 40 + 20;
/// `ETH_P_IP` / `ETH_P_IPV6` as a little-endian load of the wire's two bytes reads them.
const ETH_P_IP_WIRE: u32 = 0x0008;
const ETH_P_IPV6_WIRE: u32 = 0xdd86;

/// A fast-path packet as the full path would count it.
struct Plain {
    /// The stream key's six 8-byte words, `ifindex` and `direction` not yet in.
    key: [u64; 6],
    /// The key's 4-byte words 1, 4, 5 and 8 (see `flows::cache_index_of`).
    idx: [u32; 4],
    proto: u32,
    family: u8,
    /// IP bytes of the packet.
    bytes: u32,
    tcp_flags: u8,
}

/// Counts the packet in this CPU's cache if it is a fast-path packet whose stream the
/// cache holds; false: nothing was counted, take the full path.
#[inline(always)]
pub(crate) fn counted<P: Packet>(pkt: &P, dir: u8) -> bool {
    let (start, end) = pkt.bounds();
    if start + FAST_LEN_V4 > end {
        return false;
    }
    // SAFETY: `FAST_LEN_V4` bytes from `start` are in the frame (checked above); plain
    // loads at any offset, as in `Skb::load`.
    let ethertype = unsafe { core::ptr::read((start + 12) as *const u16) } as u32;
    // One copy of the rest per family, so that the IPv4 copy keeps its zero words as
    // constants (a shared copy cost the IPv4 path 1 ns in the test run, measured).
    if ethertype == ETH_P_IP_WIRE {
        match ipv4(start) {
            Some(f) => count(pkt, dir, &f),
            None => false,
        }
    } else if ethertype == ETH_P_IPV6_WIRE && start + FAST_LEN_V6 <= end {
        match ipv6(start) {
            Some(f) => count(pkt, dir, &f),
            None => false,
        }
    } else {
        false
    }
}

/// Adds a fast-path packet to its stream's cache slot, if the cache holds the stream.
#[inline(always)]
fn count<P: Packet>(pkt: &P, dir: u8, f: &Plain) -> bool {
    if f.tcp_flags & (TCP_FIN | TCP_RST) != 0 || pkt.segments() > 1 {
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
    let ifindex = pkt.ifindex();
    // The key's word 10 (protocol, family, direction, action) and word 11 (flags:
    // ports known; path unclassified).
    let w10 = f.proto | (f.family as u32) << 8 | (dir as u32) << 16 | (action::ACCEPT as u32) << 24;
    let w11 = key_flags::PORTS as u64 | (TRAFFIC_PATH_UNCLASSIFIED as u64) << 8;
    let ports = (f.key[4] >> 32) as u32;
    let i = cache_index_of(ifindex, f.idx[0], f.idx[1], f.idx[2], f.idx[3], ports, w10);
    let Some(c) = cache_slot(counter, i) else {
        return false;
    };
    // SAFETY: this CPU's slot (see `flows::record`).
    let c = unsafe { &mut *c };
    if c.tag != counter.wrapping_add(1) {
        return false;
    }
    let q = &c.key as *const flowlog_common::FlowKey as *const u64;
    // SAFETY: words `< 6` of the 48-byte, 8-aligned key in the slot.
    let k = |i: usize| unsafe { read_volatile(q.add(i)) };
    let differs = (k(0) ^ (f.key[0] | ifindex as u64))
        | (k(1) ^ f.key[1])
        | (k(2) ^ f.key[2])
        | (k(3) ^ f.key[3])
        | (k(4) ^ f.key[4])
        | (k(5) ^ (w10 as u64 | w11 << 32));
    if differs != 0 {
        return false;
    }
    c.packets += 1;
    c.bytes += f.bytes as u64;
    c.tcp_flags |= f.tcp_flags;
    c.rule_id = flowlog_common::policy::RULE_NONE;
    true
}

/// IPv4 with a 20-byte header, MF clear and offset 0 (DF may be set), TCP or UDP whose
/// header lies within the IP length (the full path's `avail` test). `start` has
/// [`FAST_LEN_V4`] bytes.
#[inline(always)]
fn ipv4(start: usize) -> Option<Plain> {
    // SAFETY: offsets + 4 <= FAST_LEN_V4 (the caller checked the frame).
    let word = |off: usize| unsafe { core::ptr::read((start + off) as *const u32) };
    // 14: version/IHL, TOS, total length; 20: fragment field, TTL, protocol.
    let w14 = word(14);
    let w20 = word(20);
    let proto = (w20 >> 24) & 0xff;
    let tot_len = ((w14 >> 8) & 0xff00) | (w14 >> 24);
    let l4_min = if proto == IPPROTO_TCP as u32 { 40 } else { 28 };
    if (w14 & 0xff) != 0x45
        || (w20 & 0xff3f) != 0
        || (proto != IPPROTO_TCP as u32 && proto != IPPROTO_UDP as u32)
        || tot_len < l4_min
    {
        return None;
    }
    let (saddr, daddr) = (word(26), word(30));
    // Ports in host order, source in the low half (the key's word 9).
    let ports = word(34).swap_bytes().rotate_left(16);
    Some(Plain {
        // An IPv4 address fills the first 4 of its 16 bytes.
        key: [
            (saddr as u64) << 32,
            0,
            (daddr as u64) << 32,
            0,
            (ports as u64) << 32,
            0,
        ],
        idx: [saddr, 0, daddr, 0],
        proto,
        family: family::IPV4,
        bytes: tot_len,
        tcp_flags: tcp_flags(start, 14 + 20, proto),
    })
}

/// IPv6 whose next header is TCP or UDP (no extension header), the transport header
/// within the payload length. `start` has [`FAST_LEN_V6`] bytes.
#[inline(always)]
fn ipv6(start: usize) -> Option<Plain> {
    // SAFETY: offsets + 4 <= FAST_LEN_V6 (the caller checked the frame).
    let word = |off: usize| unsafe { core::ptr::read((start + off) as *const u32) };
    // 14: version, traffic class, flow label; 18: payload length, next header, hop
    // limit.
    let w14 = word(14);
    let w18 = word(18);
    let proto = (w18 >> 16) & 0xff;
    let payload_len = ((w18 & 0xff) << 8) | ((w18 >> 8) & 0xff);
    let l4_min = if proto == IPPROTO_TCP as u32 { 20 } else { 8 };
    if (w14 & 0xf0) != 0x60
        || (proto != IPPROTO_TCP as u32 && proto != IPPROTO_UDP as u32)
        || payload_len < l4_min
    {
        return None;
    }
    let s = [word(22), word(26), word(30), word(34)];
    let d = [word(38), word(42), word(46), word(50)];
    let ports = word(54).swap_bytes().rotate_left(16);
    let pair = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    Some(Plain {
        key: [
            (s[0] as u64) << 32,
            pair(s[1], s[2]),
            pair(s[3], d[0]),
            pair(d[1], d[2]),
            pair(d[3], ports),
            0,
        ],
        idx: [s[0], s[3], d[0], d[3]],
        proto,
        family: family::IPV6,
        bytes: 40 + payload_len,
        tcp_flags: tcp_flags(start, 14 + 40, proto),
    })
}

/// The TCP flag byte of the transport header at `l4` (0 for UDP); the caller checked
/// that the frame holds 20 bytes there.
#[inline(always)]
fn tcp_flags(start: usize, l4: usize, proto: u32) -> u8 {
    if proto == IPPROTO_TCP as u32 {
        // SAFETY: `l4 + 13 < l4 + 20`, within the checked frame.
        unsafe { core::ptr::read((start + l4 + 13) as *const u8) }
    } else {
        0
    }
}
