//! A byte-exact packet builder for `BPF_PROG_TEST_RUN`: Ethernet with optional
//! 802.1Q/802.1ad tags and padding, IPv4 with options and fragmentation, IPv6 with
//! extension headers, and TCP/UDP/ICMP/SCTP/DCCP/UDP-Lite/other transports.
//!
//! Transport checksums are left zero (the observer does not verify them); the IPv4
//! header checksum is correct.
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_DCCP: u8 = 33;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

pub const FIN: u8 = 1;
pub const SYN: u8 = 2;
pub const RST: u8 = 4;
pub const PSH: u8 = 8;
pub const ACK: u8 = 16;
pub const URG: u8 = 32;

/// Minimum Ethernet frame without FCS.
pub const ETH_MIN_FRAME: usize = 60;

const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet frame with `tags` ((TPID, VLAN id) outermost first), padded to 60 bytes.
pub fn ethernet(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet_unpadded(tags, ethertype, payload);
    if f.len() < ETH_MIN_FRAME {
        f.resize(ETH_MIN_FRAME, 0);
    }
    f
}

/// Ethernet frame without padding (a frame as short as its content).
pub fn ethernet_unpadded(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    for (tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Untagged, padded Ethernet frame carrying an IPv4 packet.
pub fn eth4(ip: &[u8]) -> Vec<u8> {
    ethernet(&[], ETH_P_IP, ip)
}

/// Untagged, padded Ethernet frame carrying an IPv6 packet.
pub fn eth6(ip: &[u8]) -> Vec<u8> {
    ethernet(&[], ETH_P_IPV6, ip)
}

/// IPv4 header fields.
#[derive(Debug, Clone)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub id: u16,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// IP options, padded with EOL to a multiple of 4 bytes (at most 40).
    pub options: Vec<u8>,
    pub ttl: u8,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            protocol,
            id: 0x4242,
            frag_offset: 0,
            more_fragments: false,
            options: Vec::new(),
            ttl: 64,
        }
    }

    pub fn options(mut self, options: &[u8]) -> Ipv4 {
        self.options = options.to_vec();
        self
    }

    pub fn fragment(mut self, id: u16, offset_units: u16, more: bool) -> Ipv4 {
        self.id = id;
        self.frag_offset = offset_units;
        self.more_fragments = more;
        self
    }

    /// Header length in bytes (with padded options).
    pub fn header_len(&self) -> usize {
        20 + self.options.len().div_ceil(4) * 4
    }

    /// Header + `payload`, total length = header + payload.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let total = self.header_len() + payload.len();
        self.build_with_total_len(payload, total as u16)
    }

    /// Header + `payload` with an explicit total length field (GSO super-packets,
    /// inconsistent headers).
    pub fn build_with_total_len(&self, payload: &[u8], total_len: u16) -> Vec<u8> {
        let hl = self.header_len();
        assert!(hl <= 60, "IPv4 options longer than 40 bytes");
        let mut h = vec![0u8; hl];
        h[0] = 0x40 | (hl / 4) as u8;
        h[2..4].copy_from_slice(&total_len.to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        let frag = (self.frag_offset & 0x1fff) | if self.more_fragments { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.protocol;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        h[20..20 + self.options.len()].copy_from_slice(&self.options);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// An IPv6 extension header.
#[derive(Debug, Clone)]
pub enum Ext {
    /// Hop-by-hop options of `8 * (1 + len8)` bytes (PadN filled).
    HopByHop { len8: u8 },
    /// Destination options of `8 * (1 + len8)` bytes (PadN filled).
    DestOpts { len8: u8 },
    /// Routing header type 0 with segments left 0 and the given addresses.
    Routing { addrs: Vec<Ipv6Addr> },
    /// Fragment header; `offset` in 8-byte units.
    Fragment { offset: u16, more: bool, id: u32 },
}

impl Ext {
    fn proto(&self) -> u8 {
        match self {
            Ext::HopByHop { .. } => IPPROTO_HOPOPTS,
            Ext::DestOpts { .. } => IPPROTO_DSTOPTS,
            Ext::Routing { .. } => IPPROTO_ROUTING,
            Ext::Fragment { .. } => IPPROTO_FRAGMENT,
        }
    }

    fn encode(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::HopByHop { len8 } | Ext::DestOpts { len8 } => {
                let len = 8 * (1 + *len8 as usize);
                let mut h = vec![0u8; len];
                h[0] = next;
                h[1] = *len8;
                // One PadN option covering the rest of the header.
                h[2] = 1;
                h[3] = (len - 4) as u8;
                h
            }
            Ext::Routing { addrs } => {
                let mut h = vec![0u8; 8];
                h[0] = next;
                h[1] = (2 * addrs.len()) as u8;
                h[2] = 0; // type 0
                h[3] = 0; // segments left
                for a in addrs {
                    h.extend_from_slice(&a.octets());
                }
                h
            }
            Ext::Fragment { offset, more, id } => {
                let mut h = vec![0u8; 8];
                h[0] = next;
                let off = (offset << 3) | u16::from(*more);
                h[2..4].copy_from_slice(&off.to_be_bytes());
                h[4..8].copy_from_slice(&id.to_be_bytes());
                h
            }
        }
    }
}

/// IPv6 header with an extension header chain.
#[derive(Debug, Clone)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub ext: Vec<Ext>,
    /// The transport protocol after the extension headers.
    pub protocol: u8,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8) -> Ipv6 {
        Ipv6 {
            src,
            dst,
            ext: Vec::new(),
            protocol,
        }
    }

    pub fn ext(mut self, ext: Ext) -> Ipv6 {
        self.ext.push(ext);
        self
    }

    /// Extension headers encoded, in order.
    pub fn ext_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, e) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(self.protocol, Ext::proto);
            out.extend(e.encode(next));
        }
        out
    }

    /// Fixed header + extension headers + `payload`; payload length = extensions +
    /// payload.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let plen = self.ext_bytes().len() + payload.len();
        self.build_with_payload_len(payload, plen as u16)
    }

    /// As [`Ipv6::build`] with an explicit payload length field.
    pub fn build_with_payload_len(&self, payload: &[u8], payload_len: u16) -> Vec<u8> {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&payload_len.to_be_bytes());
        h[6] = self.ext.first().map_or(self.protocol, Ext::proto);
        h[7] = 64;
        h[8..24].copy_from_slice(&self.src.octets());
        h[24..40].copy_from_slice(&self.dst.octets());
        h.extend(self.ext_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// TCP header (20 bytes + `options` padded with NOPs to 4) followed by `data`.
pub fn tcp_with_options(sport: u16, dport: u16, flags: u8, options: &[u8], data: &[u8]) -> Vec<u8> {
    let opt_len = options.len().div_ceil(4) * 4;
    let mut h = vec![0u8; 20 + opt_len];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    if flags & ACK != 0 {
        h[8..12].copy_from_slice(&2000u32.to_be_bytes());
    }
    h[12] = (((20 + opt_len) / 4) as u8) << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&65535u16.to_be_bytes());
    h[20..20 + options.len()].copy_from_slice(options);
    for b in &mut h[20 + options.len()..] {
        *b = 1; // NOP
    }
    h.extend_from_slice(data);
    h
}

/// TCP header without options followed by `data`.
pub fn tcp(sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
    tcp_with_options(sport, dport, flags, &[], data)
}

/// UDP (or UDP-Lite) header with the length field covering `data`, then `data`.
pub fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    udp_with_len(sport, dport, (8 + data.len()) as u16, data)
}

/// UDP header with an explicit length field (first fragments carry the whole
/// datagram's length).
pub fn udp_with_len(sport: u16, dport: u16, len: u16, data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&len.to_be_bytes());
    h.extend_from_slice(data);
    h
}

/// ICMP/ICMPv6 echo (`typ` 8/0 or 128/129) with `data`; ICMPv4 checksum filled.
pub fn icmp_echo(typ: u8, id: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let mut h = vec![typ, 0, 0, 0];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(data);
    let c = checksum(&h);
    h[2..4].copy_from_slice(&c.to_be_bytes());
    h
}

/// A transport header that starts with source and destination ports (SCTP common
/// header: 12 bytes; DCCP generic header: 16 bytes; UDP-Lite: 8), then `data`.
pub fn ports_header(sport: u16, dport: u16, header_len: usize, data: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; header_len.max(4)];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(data);
    h
}

/// GRE header (4 bytes, protocol type IPv4) followed by `data`.
pub fn gre(data: &[u8]) -> Vec<u8> {
    let mut h = vec![0, 0, 0x08, 0x00];
    h.extend_from_slice(data);
    h
}

/// An ARP request (Ethernet/IPv4), as a padded frame.
pub fn arp_frame() -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    a.extend_from_slice(&SRC_MAC);
    a.extend_from_slice(&[10, 0, 0, 1]);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[10, 0, 0, 2]);
    ethernet(&[], ETH_P_ARP, &a)
}

/// `n` bytes of arbitrary payload.
pub fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 199) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies() {
        let ip = Ipv4::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17)
            .options(&[0x94, 0x04, 0, 0])
            .build(&udp(1, 2, &[]));
        assert_eq!(ip[0], 0x46);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 32);
        assert_eq!(checksum(&ip[..24]), 0);
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let ip = Ipv6::new(a, a, IPPROTO_UDP)
            .ext(Ext::HopByHop { len8: 0 })
            .ext(Ext::DestOpts { len8: 1 })
            .ext(Ext::Routing { addrs: vec![a] })
            .build(&udp(1, 2, &[0; 4]));
        assert_eq!(ip[6], IPPROTO_HOPOPTS);
        assert_eq!(ip[40], IPPROTO_DSTOPTS);
        assert_eq!(ip[48], IPPROTO_ROUTING);
        assert_eq!(ip[64], IPPROTO_UDP);
        assert_eq!(ip.len(), 40 + 8 + 16 + 24 + 12);
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]) as usize, ip.len() - 40);
    }

    #[test]
    fn frames_are_padded() {
        let f =
            eth4(&Ipv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 17).build(&udp(1, 2, &[])));
        assert_eq!(f.len(), 60);
        let q = ethernet(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)], ETH_P_IP, &[]);
        assert_eq!(&q[12..22], &[0x88, 0xa8, 0, 10, 0x81, 0, 0, 20, 0x08, 0]);
    }
}
