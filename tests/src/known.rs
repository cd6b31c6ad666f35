//! The known UDP burst of the exact-count tests: 12 datagrams from A:40000 to B:5001,
//! 7 with 100 and 5 with 1000 bytes of payload, so 12 packets and
//! 7 x 128 + 5 x 1028 IP bytes on the wire.
use std::time::Duration;

use crate::{
    record::{totals, Filter, Record},
    traffic::{udp_send, v4, UdpSink},
    Netns, VethPair,
};

/// Payload sizes of the burst.
pub fn sizes() -> Vec<usize> {
    let mut v = vec![100; 7];
    v.extend([1000; 5]);
    v
}

/// IP-layer bytes of the burst.
pub const BYTES: u64 = 7 * 128 + 5 * 1028;
/// Packets of the burst.
pub const PACKETS: u64 = 12;
/// Destination port (bind a [`UdpSink`] on B's address there first: [`sink`]).
pub const DPORT: u16 = 5001;
/// Source port.
pub const SPORT: u16 = 40000;

/// The receiver of the burst in B's namespace.
pub fn sink(b: &Netns, v: &VethPair) -> UdpSink {
    UdpSink::bind(b.name(), v4(v.v4_b, DPORT))
}

/// Sends the burst from A and waits until B received all of it.
pub fn send(a: &Netns, v: &VethPair, sink: &UdpSink) {
    let sent = udp_send(
        a.name(),
        v4(v.v4_a, SPORT),
        v4(v.v4_b, DPORT),
        &sizes(),
        None,
    );
    assert_eq!(sent as u64, PACKETS, "datagrams sent");
    assert_eq!(
        sink.wait_for(PACKETS, Duration::from_secs(5)),
        PACKETS,
        "datagrams received"
    );
}

/// The OK records of the burst's stream, as A's egress sees it.
pub fn filter(v: &VethPair) -> Filter {
    Filter::ok()
        .dir("out")
        .proto(17)
        .src(v.v4_a)
        .sport(SPORT)
        .dst(v.v4_b)
        .dport(DPORT)
}

/// Asserts that `records` hold the burst exactly (summed over windows).
pub fn assert_exact(records: &[Record], v: &VethPair) {
    let (p, b) = totals(filter(v).select(records));
    assert_eq!(
        (p, b),
        (PACKETS, BYTES),
        "the known burst; records: {records:#?}"
    );
}

/// Sends `n` datagrams of `payload` bytes on the known stream (A:SPORT to B:DPORT),
/// paced evenly over `over`, in a thread; joins to the number sent.
pub fn paced(
    a: &Netns,
    v: &VethPair,
    n: usize,
    payload: usize,
    over: Duration,
) -> std::thread::JoinHandle<usize> {
    let (ns, src, dst) = (a.name().to_string(), v4(v.v4_a, SPORT), v4(v.v4_b, DPORT));
    std::thread::spawn(move || udp_send(&ns, src, dst, &vec![payload; n], Some(over)))
}
