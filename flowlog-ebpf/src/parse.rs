//! Packet parsing: Ethernet, up to three VLAN tags, IPv4 (options, fragments) and
//! IPv6 (extension headers, fragments), transport ports and TCP flags, GSO segment
//! counts. Every read is bounds-checked ([`Packet::load`]); a frame that cannot be
//! placed in a stream is counted in `COUNTERS`, never dropped.
use core::mem::size_of;

use aya_ebpf::{
    helpers::generated::bpf_xdp_load_bytes,
    macros::map,
    maps::LruHashMap,
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use flowlog_common::{
    action, counter, family, key_flags, FlowKey, FragKey, FragPorts, TRAFFIC_PATH_UNCLASSIFIED,
};

use crate::prog::{bump, Parsed};

#[map(name = "FRAGS")]
pub(crate) static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(8192, 0);

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88A8;
pub(crate) const ETH_P_QINQ_OLD: u16 = 0x9100;
/// 802.1Q / 802.1ad tags followed (outer S-tag, inner C-tag, one spare).
pub(crate) const MAX_VLAN_TAGS: usize = 3;
/// IPv6 extension headers followed before giving up on reaching L4.
pub(crate) const MAX_IPV6_EXT: usize = 8;

pub(crate) const IPPROTO_HOPOPTS: u8 = 0;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_DCCP: u8 = 33;
pub(crate) const IPPROTO_ROUTING: u8 = 43;
pub(crate) const IPPROTO_FRAGMENT: u8 = 44;
pub(crate) const IPPROTO_AH: u8 = 51;
pub(crate) const IPPROTO_DSTOPTS: u8 = 60;
pub(crate) const IPPROTO_SCTP: u8 = 132;
pub(crate) const IPPROTO_MH: u8 = 135;
pub(crate) const IPPROTO_UDPLITE: u8 = 136;
pub(crate) const IPPROTO_HIP: u8 = 139;
pub(crate) const IPPROTO_SHIM6: u8 = 140;

pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_RST: u8 = 0x04;

/// Read access to a packet, bounds-checked by the kernel helpers.
pub(crate) trait Packet {
    /// Reads a `T` at `offset` from the start of the frame.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
    /// Start and end of the part of the frame that direct access reads (TC: the
    /// linear part; XDP: the first buffer).
    fn bounds(&self) -> (usize, usize);
    /// Frame length as the program sees it (linear + paged data).
    fn len(&self) -> u32;
    fn ifindex(&self) -> u32;
    /// Wire segments this frame stands for (GSO/GRO super-packets), at least 1.
    fn segments(&self) -> u32;
    /// Logs (through aya-log) that the flow map overflowed on `ifindex`: once per
    /// interface per window, never per packet.
    fn warn_overflow(&self, ifindex: u32);
}

pub(crate) struct Skb<'a>(pub(crate) &'a TcContext);

/// Headers beyond this offset are read through the helper only (keeps the
/// verifier's bound on direct packet access small).
pub(crate) const MAX_DIRECT_OFFSET: usize = 256;

impl Packet for Skb<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        // Direct access to the linear part (where headers almost always are) is much
        // cheaper than a helper call; anything else goes through bpf_skb_load_bytes,
        // which also reads paged data.
        let start = self.0.data();
        let end = self.0.data_end();
        if offset < MAX_DIRECT_OFFSET && start + offset + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above. The read is typed,
            // not `read_unaligned`: on the BPF target LLVM turns an unaligned read into
            // one load and one stack store per byte, while the kernel accepts plain
            // 2/4/8-byte packet loads at any offset where the CPU handles them (no
            // BPF_F_STRICT_ALIGNMENT), as every C program reading `iph->saddr` does.
            // Header types below use 2- and 4-byte fields so that fields are loaded
            // whole; nothing here relies on the address being aligned.
            #[allow(clippy::cast_ptr_alignment)]
            return Some(unsafe { core::ptr::read((start + offset) as *const T) });
        }
        self.0.load::<T>(offset).ok()
    }
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        self.0.len()
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer is the kernel's `__sk_buff` for this run.
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn segments(&self) -> u32 {
        // SAFETY: as above; `gso_segs` is a readable `__sk_buff` field.
        let segs = unsafe { (*self.0.skb.skb).gso_segs };
        if segs == 0 {
            1
        } else {
            segs
        }
    }
    #[inline(never)]
    fn warn_overflow(&self, ifindex: u32) {
        warn!(
            self.0,
            "flow map full on ifindex {}: further new streams go to SKIPDATA", ifindex
        );
    }
}

pub(crate) struct Xdp<'a>(pub(crate) &'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        // As for TC: direct access to the frame's first buffer, the helper for
        // anything else (the later buffers of a multi-buffer frame).
        let start = self.0.data();
        let end = self.0.data_end();
        if offset < MAX_DIRECT_OFFSET && start + offset + size_of::<T>() <= end {
            // SAFETY: bounds checked against data_end just above; see `Skb::load` for
            // why the read is typed.
            #[allow(clippy::cast_ptr_alignment)]
            return Some(unsafe { core::ptr::read((start + offset) as *const T) });
        }
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        // SAFETY: the helper writes exactly size_of::<T>() bytes or fails.
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.0.as_ptr().cast(),
                offset as u32,
                v.as_mut_ptr().cast(),
                size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            // SAFETY: fully initialised by the helper on success.
            Some(unsafe { v.assume_init() })
        } else {
            None
        }
    }
    #[inline(always)]
    fn bounds(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.0.data_end() - self.0.data()) as u32
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.0.ingress_ifindex() as u32
    }
    #[inline(always)]
    fn segments(&self) -> u32 {
        1
    }
    #[inline(never)]
    fn warn_overflow(&self, ifindex: u32) {
        warn!(
            self.0,
            "flow map full on ifindex {}: further new streams go to SKIPDATA", ifindex
        );
    }
}

#[inline(always)]
fn be16(v: [u8; 2]) -> u16 {
    u16::from_be_bytes(v)
}

/// Parses a frame into its stream key and wire figures. `None` when the frame carries
/// no IP packet that can be placed in a stream (the reason is counted).
#[inline(always)]
pub(crate) fn parse<P: Packet>(pkt: &P, dir: u8) -> Option<Parsed> {
    let Some(mut proto) = pkt.load::<u16>(12).map(u16::from_be) else {
        bump(counter::TRUNCATED_L3);
        return None;
    };
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD && proto != ETH_P_QINQ_OLD {
            break;
        }
        let Some(inner) = pkt.load::<u16>(off + 2).map(u16::from_be) else {
            bump(counter::TRUNCATED_L3);
            return None;
        };
        proto = inner;
        off += 4;
    }
    let key = FlowKey {
        ifindex: pkt.ifindex(),
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        family: 0,
        direction: dir,
        action: action::ACCEPT,
        flags: 0,
        traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
        _pad: [0; 2],
    };
    let segs = pkt.segments();
    match proto {
        ETH_P_IP => parse_ipv4(pkt, off, segs, key),
        ETH_P_IPV6 => parse_ipv6(pkt, off, segs, key),
        _ => {
            bump(counter::NOT_IP);
            None
        }
    }
}

/// First 20 bytes of an IPv4 header. Multi-byte fields are in network order, read as
/// one load each (see `Skb::load`).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv6Hdr {
    ver_tc_flow: u32,
    payload_len: u16,
    next_hdr: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

/// The fixed part of a TCP header (ports, sequence numbers, offset and flags).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct TcpHdr {
    ports: u32,
    seq: u32,
    ack_seq: u32,
    off: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg: u16,
}

/// Addresses as the flow key stores them (network order bytes).
#[inline(always)]
pub(crate) fn addr16(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size, every bit pattern is valid.
    unsafe { core::mem::transmute(words) }
}

#[inline(always)]
pub(crate) fn parse_ipv4<P: Packet>(
    pkt: &P,
    off: usize,
    segs: u32,
    mut key: FlowKey,
) -> Option<Parsed> {
    let Some(ip) = pkt.load::<Ipv4Hdr>(off) else {
        bump(counter::TRUNCATED_L3);
        return None;
    };
    if ip.ver_ihl >> 4 != 4 {
        bump(counter::MALFORMED);
        return None;
    }
    key.family = family::IPV4;
    key.protocol = ip.protocol;
    key.src_addr = addr16([ip.saddr, 0, 0, 0]);
    key.dst_addr = addr16([ip.daddr, 0, 0, 0]);
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(ip.tot_len) as u64;
    // Super-packets (GSO/GRO, BIG TCP with tot_len 0) carry their size in the frame
    // length; a single packet's own length field excludes Ethernet padding/trailers.
    let ip_len = if segs > 1 || tot_len == 0 {
        (pkt.len() as u64).saturating_sub(off as u64)
    } else {
        tot_len
    };
    let mut parsed = Parsed {
        key,
        bytes: ip_len,
        packets: segs as u64,
        tcp_flags: 0,
        rule_id: 0,
    };
    if ihl < 20 {
        bump(counter::MALFORMED);
        return Some(parsed);
    }
    let frag = u16::from_be(ip.frag_off);
    let frag_offset = frag & 0x1fff;
    let more_frags = frag & 0x2000 != 0;
    let frag_key = FragKey {
        ifindex: parsed.key.ifindex,
        id: u16::from_be(ip.id) as u32,
        src_addr: parsed.key.src_addr,
        dst_addr: parsed.key.dst_addr,
        protocol: ip.protocol,
        direction: parsed.key.direction,
        _pad: [0; 2],
    };
    if frag_offset != 0 {
        later_fragment(&mut parsed.key, &frag_key);
        return Some(parsed);
    }
    let avail = (parsed.bytes as usize).saturating_sub(ihl);
    let hdr = parse_l4(pkt, off + ihl, avail, &mut parsed);
    if more_frags {
        first_fragment(&parsed.key, &frag_key);
    }
    if segs > 1 {
        parsed.bytes += (segs as u64 - 1) * (ihl as u64 + hdr as u64);
    }
    Some(parsed)
}

#[inline(always)]
pub(crate) fn parse_ipv6<P: Packet>(
    pkt: &P,
    off: usize,
    segs: u32,
    mut key: FlowKey,
) -> Option<Parsed> {
    let Some(ip) = pkt.load::<Ipv6Hdr>(off) else {
        bump(counter::TRUNCATED_L3);
        return None;
    };
    if (ip.ver_tc_flow as u8) >> 4 != 6 {
        bump(counter::MALFORMED);
        return None;
    }
    key.family = family::IPV6;
    key.src_addr = addr16(ip.saddr);
    key.dst_addr = addr16(ip.daddr);
    let payload_len = u16::from_be(ip.payload_len) as u64;
    // A payload length of 0 is an empty packet, except on GSO super-packets (BIG
    // TCP), whose size only the frame tells.
    let ip_len = if segs > 1 {
        (pkt.len() as u64).saturating_sub(off as u64)
    } else {
        40 + payload_len
    };
    let mut next = ip.next_hdr;
    let mut l4 = off + 40;
    let mut frag: Option<(u32, bool, bool)> = None; // (id, first, more)
    let mut reached_l4 = false;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_HIP
            | IPPROTO_SHIM6 => {
                let Some(h) = pkt.load::<[u8; 2]>(l4) else {
                    break;
                };
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            IPPROTO_AH => {
                let Some(h) = pkt.load::<[u8; 2]>(l4) else {
                    break;
                };
                next = h[0];
                l4 += (h[1] as usize + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let Some(h) = pkt.load::<[u8; 8]>(l4) else {
                    break;
                };
                next = h[0];
                let fo = be16([h[2], h[3]]);
                frag = Some((
                    u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    fo >> 3 == 0,
                    fo & 1 != 0,
                ));
                l4 += 8;
                if fo >> 3 != 0 {
                    // A later fragment: its payload is no L4 header.
                    reached_l4 = true;
                    break;
                }
            }
            _ => {
                reached_l4 = true;
                break;
            }
        }
    }
    key.protocol = next;
    let mut parsed = Parsed {
        key,
        bytes: ip_len,
        packets: segs as u64,
        tcp_flags: 0,
        rule_id: 0,
    };
    if !reached_l4 {
        bump(counter::TRUNCATED_L4);
        return Some(parsed);
    }
    let frag_key = FragKey {
        ifindex: parsed.key.ifindex,
        id: 0,
        src_addr: parsed.key.src_addr,
        dst_addr: parsed.key.dst_addr,
        protocol: next,
        direction: parsed.key.direction,
        _pad: [0; 2],
    };
    if let Some((id, false, _)) = frag {
        let fk = FragKey { id, ..frag_key };
        later_fragment(&mut parsed.key, &fk);
        return Some(parsed);
    }
    let avail = (off + parsed.bytes as usize).saturating_sub(l4);
    let hdr = parse_l4(pkt, l4, avail, &mut parsed);
    if let Some((id, true, true)) = frag {
        let fk = FragKey { id, ..frag_key };
        first_fragment(&parsed.key, &fk);
    }
    if segs > 1 {
        parsed.bytes += (segs as u64 - 1) * ((l4 - off) as u64 + hdr as u64);
    }
    Some(parsed)
}

/// Reads ports (and TCP flags) of the transport header at `off`, which must lie
/// whole within the IP packet (`avail` bytes from `off` to the IP length) and the
/// frame: a cut header yields no ports (and `TRUNCATED_L4`), never bytes of padding.
/// Returns the L4 header length that every GSO segment repeats (0 when unknown).
#[inline(always)]
pub(crate) fn parse_l4<P: Packet>(pkt: &P, off: usize, avail: usize, parsed: &mut Parsed) -> u32 {
    let proto = parsed.key.protocol;
    let hdr_len: usize = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_UDPLITE => 8,
        IPPROTO_SCTP | IPPROTO_DCCP => 12,
        _ => return 0,
    };
    if avail < hdr_len {
        bump(counter::TRUNCATED_L4);
        return 0;
    }
    // One load of the whole fixed header proves the frame holds it.
    let ports = match proto {
        IPPROTO_TCP => {
            let Some(h) = pkt.load::<TcpHdr>(off) else {
                bump(counter::TRUNCATED_L4);
                return 0;
            };
            // Data offset: high nibble of byte 12.
            parsed.tcp_flags = h.flags;
            set_ports(parsed, h.ports);
            return ((h.off >> 4) as u32) * 4;
        }
        IPPROTO_UDP | IPPROTO_UDPLITE => pkt.load::<[u32; 2]>(off).map(|h| h[0]),
        _ => pkt.load::<[u32; 3]>(off).map(|h| h[0]),
    };
    let Some(ports) = ports else {
        bump(counter::TRUNCATED_L4);
        return 0;
    };
    set_ports(parsed, ports);
    hdr_len as u32
}

/// `ports`: the first 4 bytes of the transport header as loaded (source port, then
/// destination port, network order).
#[inline(always)]
pub(crate) fn set_ports(parsed: &mut Parsed, ports: u32) {
    let b = ports.to_ne_bytes();
    parsed.key.src_port = be16([b[0], b[1]]);
    parsed.key.dst_port = be16([b[2], b[3]]);
    parsed.key.flags |= key_flags::PORTS;
}

#[inline(always)]
pub(crate) fn first_fragment(key: &FlowKey, fk: &FragKey) {
    if key.flags & key_flags::PORTS == 0 {
        return;
    }
    let ports = FragPorts {
        src_port: key.src_port,
        dst_port: key.dst_port,
    };
    if FRAGS.insert(fk, &ports, 0).is_err() {
        bump(counter::FRAG_MAP_ERROR);
    }
}

#[inline(always)]
pub(crate) fn later_fragment(key: &mut FlowKey, fk: &FragKey) {
    match FRAGS.get_ptr(fk) {
        Some(p) => {
            // SAFETY: value pointer returned by the map for this key.
            let ports = unsafe { *p };
            key.src_port = ports.src_port;
            key.dst_port = ports.dst_port;
            key.flags |= key_flags::PORTS;
        }
        None => bump(counter::FRAG_UNKNOWN),
    }
}
