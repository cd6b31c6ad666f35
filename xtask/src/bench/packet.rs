//! Hand-built Ethernet frames: the bench's traffic and its test-run inputs.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::sys::{Pair, SINK_PORT};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_PSH: u8 = 0x08;

/// MACs of test-run frames (any will do).
const TEST_DST_MAC: [u8; 6] = [0x02, 0xfb, 0, 0, 0xff, 0x02];
const TEST_SRC_MAC: [u8; 6] = [0x02, 0xfb, 0, 0, 0xff, 0x01];

fn eth(frame: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ethertype.to_be_bytes());
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in bytes.chunks(2) {
        let word = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4(frame: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: usize) {
    let start = frame.len();
    let total = (20 + l4_len) as u16;
    frame.push(0x45);
    frame.push(0);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0x12, 0x34, 0x40, 0x00]); // id, DF
    frame.push(64);
    frame.push(protocol);
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    let c = checksum(&frame[start..start + 20]);
    frame[start + 10..start + 12].copy_from_slice(&c.to_be_bytes());
}

fn tcp(frame: &mut Vec<u8>, sport: u16, dport: u16, flags: u8, payload: usize) {
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&1_000u32.to_be_bytes()); // seq
    frame.extend_from_slice(&2_000u32.to_be_bytes()); // ack
    frame.push(5 << 4);
    frame.push(flags);
    frame.extend_from_slice(&512u16.to_be_bytes()); // window
    frame.extend_from_slice(&[0, 0, 0, 0]); // checksum (not verified by TC), urgent
    frame.extend((0..payload).map(|i| i as u8));
}

/// An IPv4 TCP segment with `payload` bytes of data (test-run input).
pub fn ipv4_tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + payload);
    eth(&mut f, TEST_DST_MAC, TEST_SRC_MAC, ETH_P_IP);
    ipv4(&mut f, src, dst, 6, 20 + payload);
    tcp(&mut f, sport, dport, TCP_ACK | TCP_PSH, payload);
    f
}

/// An IPv6 TCP segment with `payload` bytes of data (test-run input).
pub fn ipv6_tcp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(74 + payload);
    eth(&mut f, TEST_DST_MAC, TEST_SRC_MAC, ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((20 + payload) as u16).to_be_bytes());
    f.push(6);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    tcp(&mut f, sport, dport, TCP_ACK | TCP_PSH, payload);
    f
}

/// Minimum-size (60-byte) IPv4 UDP frame across `pair` to the receiver's sink port.
/// UDP checksum 0 (none), which IPv4 allows.
pub fn ipv4_udp_to_sink(pair: &Pair, src: Ipv4Addr, sport: u16) -> Vec<u8> {
    const PAYLOAD: usize = 18;
    let mut f = Vec::with_capacity(60);
    eth(&mut f, pair.receiver_mac(), pair.sender_mac(), ETH_P_IP);
    ipv4(
        &mut f,
        src,
        Ipv4Addr::from(pair.receiver_ip()),
        17,
        8 + PAYLOAD,
    );
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&SINK_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..PAYLOAD).map(|i| i as u8));
    f
}

/// `n` distinct UDP flows across `pair` to the sink, as one buffer of equal-size
/// frames: source `10.201.<pair>.(10 + i / 50000)`, port `10000 + i % 50000` (sources
/// inside the pair's /24, so the receiver routes them like any neighbour's traffic).
pub struct FlowSet {
    pub frames: Vec<u8>,
    pub frame_len: usize,
    pub count: usize,
}

impl FlowSet {
    pub fn new(n: usize, pair: &Pair) -> FlowSet {
        assert!(n >= 1 && n / 50_000 < 200, "flow count out of range");
        let mut frames = Vec::new();
        let mut frame_len = 0;
        for i in 0..n {
            let src = Ipv4Addr::new(10, 201, pair.index, 10 + (i / 50_000) as u8);
            let f = ipv4_udp_to_sink(pair, src, 10_000 + (i % 50_000) as u16);
            frame_len = f.len();
            frames.extend_from_slice(&f);
        }
        FlowSet {
            frames,
            frame_len,
            count: n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        Pair {
            index: 3,
            if_sender: "a".into(),
            if_receiver: "b".into(),
        }
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = ipv4_udp_to_sink(&pair(), Ipv4Addr::new(10, 201, 0, 10), 10_000);
        assert_eq!(f.len(), 60);
        assert_eq!(checksum(&f[14..34]), 0);
        let t = ipv4_tcp(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2, 10);
        assert_eq!(t.len(), 64);
        assert_eq!(checksum(&t[14..34]), 0);
    }

    #[test]
    fn flow_set_is_distinct() {
        let s = FlowSet::new(100_001, &pair());
        assert_eq!(s.frames.len(), 60 * 100_001);
        let key = |i: usize| s.frames[i * 60 + 26..i * 60 + 36].to_vec();
        let mut keys: Vec<_> = (0..s.count).map(key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 100_001);
    }
}
