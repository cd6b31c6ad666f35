//! Kernel-level tests of the flowlog eBPF programs (root only).
//!
//! Each test loads a fresh copy of the embedded eBPF object (so every map starts
//! empty), loads the TC ingress/egress and XDP programs without attaching them, and
//! runs hand-built frames through them with `BPF_PROG_TEST_RUN`. It then reads
//! generation 0 (active at load) of the flow table (its half of `TABLE`,
//! memory-mapped, with its overflow map `FLOWS_0` and the CPUs' stream cache) and the
//! `COUNTERS` array and
//! checks exact stream keys (addresses, host-order ports, protocol, family, direction,
//! PORTS flag) and statistics (packets, IP-layer bytes, TCP flags, closed), plus every
//! error counter. The programs must never drop: TC returns `TC_ACT_UNSPEC`, XDP returns
//! `XDP_PASS`.
//!
//! Kernel limits of test runs shape some cases: frames shorter than an Ethernet header
//! (14 bytes) are rejected by the kernel itself, and a frame is at most about 3.7 KB, so
//! GSO super-packets are built with 3-4 segments of under 1 KB.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use flowlog_agent::drain::MappedTable;
use flowlog_common::{
    action, cache_element, counter, direction, family, key_flags, names, CpuCache, FlowKey,
    FlowStats, TRAFFIC_PATH_UNCLASSIFIED,
};
use flowlog_tests::{packet::*, require_root};

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1
/// Instructions the verifier may process per program (see
/// `verifier_work_stays_within_budget`).
const VERIFIER_BUDGET: u32 = 800_000;
/// The agent's default window capacity.
const MAX_FLOWS: u32 = 65536;
const XDP_PASS: u32 = 2;

/// Userspace copy of the kernel's `struct __sk_buff` (the test-run context of TC
/// programs). Only `gso_segs` and `gso_size` are set here; the kernel rejects a context
/// with non-zero bytes in fields it does not accept, which also validates the layout.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SkBuff {
    len: u32,
    pkt_type: u32,
    mark: u32,
    queue_mapping: u32,
    protocol: u32,
    vlan_present: u32,
    vlan_tci: u32,
    vlan_proto: u32,
    priority: u32,
    ingress_ifindex: u32,
    ifindex: u32,
    tc_index: u32,
    cb: [u32; 5],
    hash: u32,
    tc_classid: u32,
    data: u32,
    data_end: u32,
    napi_id: u32,
    family: u32,
    remote_ip4: u32,
    local_ip4: u32,
    remote_ip6: [u32; 4],
    local_ip6: [u32; 4],
    remote_port: u32,
    local_port: u32,
    data_meta: u32,
    flow_keys: u64,
    tstamp: u64,
    wire_len: u32,
    gso_segs: u32,
    sk: u64,
    gso_size: u32,
    tstamp_type: u8,
    _bitfield: [u8; 3],
    hwtstamp: u64,
}
const _: () = assert!(std::mem::size_of::<SkBuff>() == 192);
const _: () = assert!(std::mem::offset_of!(SkBuff, gso_segs) == 164);
const _: () = assert!(std::mem::offset_of!(SkBuff, gso_size) == 176);

impl SkBuff {
    fn bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain integers with explicit padding fields: every byte is
        // initialised.
        unsafe {
            std::slice::from_raw_parts(
                self as *const SkBuff as *const u8,
                std::mem::size_of::<SkBuff>(),
            )
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    TcIngress,
    TcEgress,
    Xdp,
}

impl Hook {
    fn direction(self) -> u8 {
        match self {
            Hook::TcIngress | Hook::Xdp => direction::IN,
            Hook::TcEgress => direction::OUT,
        }
    }
}

/// A fresh load of the eBPF object with its three programs loaded (not attached).
struct Progs {
    ebpf: Ebpf,
    frames: u64,
}

impl Progs {
    fn load() -> Progs {
        require_root();
        let obj = flowlog_agent::ebpf_object();
        assert!(
            !obj.is_empty(),
            "the embedded eBPF object is empty (flowlog-agent built with AYA_BUILD_SKIP=1?): \
             rebuild without it"
        );
        let mut ebpf = flowlog_agent::loader::sized(MAX_FLOWS)
            .load(obj)
            .expect("loading the eBPF object");
        flowlog_agent::drain::init_config(&mut ebpf, MAX_FLOWS).expect("writing CONFIG");
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name} in the object"))
                .try_into()
                .unwrap_or_else(|e| panic!("{name} is not a SchedClassifier: {e}"));
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e:?}"));
        }
        let x: &mut Xdp = ebpf
            .program_mut(names::XDP_INGRESS)
            .unwrap_or_else(|| panic!("no program {} in the object", names::XDP_INGRESS))
            .try_into()
            .expect("XDP program type");
        x.load()
            .unwrap_or_else(|e| panic!("loading {}: {e:?}", names::XDP_INGRESS));
        Progs { ebpf, frames: 0 }
    }

    fn run(&mut self, hook: Hook, frame: &[u8]) {
        self.try_run(hook, frame, None)
            .unwrap_or_else(|e| panic!("test run of {hook:?} on {} bytes: {e}", frame.len()));
    }

    fn run_gso(&mut self, hook: Hook, frame: &[u8], segs: u32, size: u32) {
        assert_ne!(hook, Hook::Xdp, "GSO metadata only exists for skbs");
        let ctx = SkBuff {
            gso_segs: segs,
            gso_size: size,
            ..Default::default()
        };
        self.try_run(hook, frame, Some(ctx))
            .unwrap_or_else(|e| panic!("GSO test run of {hook:?}: {e}"));
    }

    /// Runs one frame; `Err` if the kernel refused the test run itself.
    fn try_run(&mut self, hook: Hook, frame: &[u8], ctx: Option<SkBuff>) -> Result<(), String> {
        let mut ctx_out = [0u8; 256];
        let ctx_in = ctx.as_ref().map(SkBuff::bytes);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in,
            ctx_out: ctx.is_some().then_some(&mut ctx_out[..]),
            ..TestRunOptions::default()
        };
        let (result, expected) = match hook {
            Hook::TcIngress | Hook::TcEgress => {
                let name = if hook == Hook::TcIngress {
                    names::TC_INGRESS
                } else {
                    names::TC_EGRESS
                };
                let p: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
                (p.test_run(opts), TC_ACT_UNSPEC)
            }
            Hook::Xdp => {
                let p: &Xdp = self
                    .ebpf
                    .program(names::XDP_INGRESS)
                    .unwrap()
                    .try_into()
                    .unwrap();
                (p.test_run(opts), XDP_PASS)
            }
        };
        let result = result.map_err(|e| format!("{e:?}"))?;
        self.frames += 1;
        assert_eq!(
            result.return_value, expected,
            "{hook:?} returned {:#x}: the observer must pass every packet",
            result.return_value
        );
        if let Some(ctx) = ctx {
            // The kernel copies the context back: the GSO fields must round-trip, which
            // proves the layout of `SkBuff`.
            let segs = u32::from_ne_bytes(ctx_out[164..168].try_into().unwrap());
            let size = u32::from_ne_bytes(ctx_out[176..180].try_into().unwrap());
            assert_eq!(
                (segs, size),
                (ctx.gso_segs, ctx.gso_size),
                "ctx_out GSO fields"
            );
        }
        Ok(())
    }

    /// The generation-0 streams as the agent drains them: the table's slots and the
    /// overflow map's entries (each stream in exactly one of them here: one thread
    /// runs the frames) plus what the CPUs' stream caches hold for them (window
    /// counter 0: tag 1).
    fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        let map: HashMap<_, FlowKey, FlowStats> =
            HashMap::try_from(self.ebpf.map(names::FLOWS[0]).expect("FLOWS_0 map"))
                .expect("FLOWS_0 is a hash map of FlowKey -> FlowStats");
        let mut out: Vec<_> = MappedTable::of(&self.ebpf, 0)
            .expect("mapping generation 0 of TABLE")
            .streams();
        out.extend(map.iter().map(|item| item.expect("iterating FLOWS_0")));
        let mut keys: Vec<_> = out.iter().map(|(k, _)| *k).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), out.len(), "a stream placed twice: {out:?}");
        let cache: Array<_, CpuCache> =
            Array::try_from(self.ebpf.map(names::CACHE).expect("CACHE map"))
                .expect("CACHE is an array of CpuCache");
        // Generation 0's caches.
        for cpu in 0..cache.len() / 2 {
            for slot in cache
                .get(&cache_element(cpu, 0), 0)
                .expect("CACHE element")
                .iter()
            {
                if slot.tag != 1 || slot.packets == 0 {
                    continue;
                }
                let (_, stats) = out
                    .iter_mut()
                    .find(|(k, _)| *k == slot.key)
                    .expect("a cached stream has its flow-map entry");
                stats.packets += slot.packets;
                stats.bytes += slot.bytes;
                stats.tcp_flags |= slot.tcp_flags;
                stats.rule_id = slot.rule_id;
            }
        }
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// The generation-1 table and overflow map must stay empty while generation 0 is
    /// active.
    fn assert_inactive_generation_empty(&self) {
        let map: HashMap<_, FlowKey, FlowStats> =
            HashMap::try_from(self.ebpf.map(names::FLOWS[1]).expect("FLOWS_1 map"))
                .expect("FLOWS_1 type");
        assert_eq!(
            map.keys().count(),
            0,
            "FLOWS_1 written while generation 0 is active"
        );
        let table = MappedTable::of(&self.ebpf, 1).expect("mapping generation 1 of TABLE");
        assert_eq!(
            table.streams().len(),
            0,
            "generation 1 of TABLE written while generation 0 is active"
        );
    }

    fn counters(&self) -> Vec<u64> {
        let arr: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::COUNTERS).expect("COUNTERS map"))
                .expect("COUNTERS is a per-CPU array of u64");
        (0..counter::COUNT)
            .map(|i| {
                arr.get(&i, 0)
                    .map(|v| v.iter().sum::<u64>())
                    .unwrap_or_else(|e| panic!("COUNTERS[{i}]: {e}"))
            })
            .collect()
    }

    /// Asserts every counter: SEEN = frames run, the listed ones as given, others 0.
    fn assert_counters(&self, expected: &[(u32, u64)]) {
        let got = self.counters();
        let mut want = vec![0u64; counter::COUNT as usize];
        want[counter::SEEN as usize] = self.frames;
        for (i, v) in expected {
            want[*i as usize] = *v;
        }
        let label = |i: usize| counter::NAMES.get(i).copied().unwrap_or("unused");
        let diff: Vec<String> = (0..want.len())
            .filter(|i| got[*i] != want[*i])
            .map(|i| format!("{}: got {} want {}", label(i), got[i], want[i]))
            .collect();
        assert!(diff.is_empty(), "COUNTERS differ: {diff:?}");
    }

    /// Asserts the flow map holds exactly `expected` (in any order).
    fn assert_flows(&self, expected: &[Exp]) {
        let flows = self.flows();
        let dump = || {
            flows
                .iter()
                .map(|(k, s)| format!("{k:?} => {s:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            flows.len(),
            expected.len(),
            "number of streams; flows:\n{}",
            dump()
        );
        if let Some((first, _)) = flows.first() {
            for (k, _) in &flows {
                assert_eq!(k.ifindex, first.ifindex, "ifindex differs between streams");
                assert_ne!(k.ifindex, 0, "ifindex 0");
            }
        }
        for e in expected {
            let matching: Vec<&(FlowKey, FlowStats)> =
                flows.iter().filter(|(k, _)| e.key_matches(k)).collect();
            assert_eq!(
                matching.len(),
                1,
                "expected one stream {e:?}; flows:\n{}",
                dump()
            );
            let (k, s) = matching[0];
            assert_eq!(k.action, action::ACCEPT, "action of {k:?}");
            assert_eq!(
                k.traffic_path, TRAFFIC_PATH_UNCLASSIFIED,
                "traffic_path of {k:?}"
            );
            assert_eq!(
                (s.packets, s.bytes),
                (e.packets, e.bytes),
                "packets/bytes of {e:?}: {s:?}"
            );
            assert_eq!(s.tcp_flags, e.tcp_flags, "tcp_flags of {e:?}: {s:?}");
            assert_eq!(s.closed, e.closed, "closed of {e:?}: {s:?}");
            assert!(
                s.first_ns > 0 && s.last_ns >= s.first_ns,
                "timestamps of {e:?}: {s:?}"
            );
        }
        self.assert_inactive_generation_empty();
    }
}

/// An expected stream and its statistics.
#[derive(Debug, Clone)]
struct Exp {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    /// `None`: no PORTS flag and both ports zero.
    ports: Option<(u16, u16)>,
    direction: u8,
    packets: u64,
    bytes: u64,
    tcp_flags: u8,
    closed: u8,
}

impl Exp {
    fn new(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, protocol: u8, hook: Hook) -> Exp {
        Exp {
            src: src.into(),
            dst: dst.into(),
            protocol,
            ports: None,
            direction: hook.direction(),
            packets: 0,
            bytes: 0,
            tcp_flags: 0,
            closed: 0,
        }
    }
    fn ports(mut self, sport: u16, dport: u16) -> Exp {
        self.ports = Some((sport, dport));
        self
    }
    fn count(mut self, packets: u64, bytes: u64) -> Exp {
        self.packets = packets;
        self.bytes = bytes;
        self
    }
    fn tcp(mut self, flags: u8, closed: u8) -> Exp {
        self.tcp_flags = flags;
        self.closed = closed;
        self
    }

    fn key_matches(&self, k: &FlowKey) -> bool {
        let fam = if self.src.is_ipv4() {
            family::IPV4
        } else {
            family::IPV6
        };
        let addr_bytes = |a: IpAddr| -> [u8; 16] {
            let mut b = [0u8; 16];
            match a {
                IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => b = v6.octets(),
            }
            b
        };
        let (sp, dp, flag) = match self.ports {
            Some((s, d)) => (s, d, key_flags::PORTS),
            None => (0, 0, 0),
        };
        k.family == fam
            && k.src_addr == addr_bytes(self.src)
            && k.dst_addr == addr_bytes(self.dst)
            && k.protocol == self.protocol
            && k.direction == self.direction
            && (k.flags & key_flags::PORTS) == flag
            && k.src_port == sp
            && k.dst_port == dp
    }
}

const A4: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
const B4: Ipv4Addr = Ipv4Addr::new(192, 168, 200, 7);

fn a6() -> Ipv6Addr {
    "2001:db8:1::a".parse().unwrap()
}
fn b6() -> Ipv6Addr {
    "fd00:7:7::b".parse().unwrap()
}

fn ip4(proto: u8) -> Ipv4 {
    Ipv4::new(A4, B4, proto)
}

/// IPv4 TCP frame with `data_len` bytes of data.
fn tcp4_frame(sport: u16, dport: u16, flags: u8, data_len: usize) -> Vec<u8> {
    eth4(&ip4(IPPROTO_TCP).build(&tcp(sport, dport, flags, &payload(data_len))))
}

fn ext_chain() -> Vec<Ext> {
    vec![
        Ext::HopByHop { len8: 0 },
        Ext::DestOpts { len8: 1 },
        Ext::Routing {
            addrs: vec!["fd00::99".parse().unwrap()],
        },
    ]
}

/// IPv6 packet behind hop-by-hop (8) + destination options (16) + routing (24).
fn ip6_with_ext(protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut ip = Ipv6::new(a6(), b6(), protocol);
    for e in ext_chain() {
        ip = ip.ext(e);
    }
    ip.build(l4)
}

const EXT_LEN: u64 = 8 + 16 + 24;

#[test]
fn ipv4_tcp_syn_repeat_fin_and_rst() {
    let mut p = Progs::load();
    let syn = tcp4_frame(40000, 80, SYN, 0);
    assert_eq!(syn.len(), 60, "a SYN frame is padded to 60 bytes");
    p.run(Hook::TcIngress, &syn);
    let stream = Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress).ports(40000, 80);
    p.assert_flows(&[stream.clone().count(1, 40).tcp(SYN, 0)]);

    p.run(Hook::TcIngress, &syn);
    p.assert_flows(&[stream.clone().count(2, 80).tcp(SYN, 0)]);

    // FIN|ACK with 100 bytes of data closes the stream.
    p.run(
        Hook::TcIngress,
        &tcp4_frame(40000, 80, FIN | ACK | PSH, 100),
    );
    let closed = stream
        .clone()
        .count(3, 80 + 140)
        .tcp(SYN | FIN | ACK | PSH, 1);
    p.assert_flows(std::slice::from_ref(&closed));

    // RST on another stream closes that one too.
    p.run(Hook::TcIngress, &tcp4_frame(40001, 80, RST | ACK, 0));
    let rst = Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress)
        .ports(40001, 80)
        .count(1, 40)
        .tcp(RST | ACK, 1);
    p.assert_flows(&[closed, rst]);
    p.assert_counters(&[]);
}

/// The fast path (`flowlog-ebpf/src/fast.rs`: a cached plain IPv4/IPv6 TCP/UDP
/// stream, read in place) and the full path count the same packets of one stream
/// alike, and each frame the fast path must not take goes to the full path: the
/// stream's first packet, DF set (fast), a frame shorter than the fast path's 54
/// bytes, IPv4 options, an IPv6 extension header, a GSO super-packet, FIN; the same
/// 5-tuple in the other direction is another stream.
#[test]
fn fast_path_edges_count_like_the_full_path() {
    let mut p = Progs::load();
    let udp_frame = |data: usize| eth4(&ip4(IPPROTO_UDP).build(&udp(7000, 53, &payload(data))));
    let plain = udp_frame(20);
    for _ in 0..4 {
        p.run(Hook::TcIngress, &plain);
    }
    let mut df = plain.clone();
    df[14 + 6] |= 0x40;
    p.run(Hook::TcIngress, &df);
    let tiny = ethernet_unpadded(
        &[],
        ETH_P_IP,
        &ip4(IPPROTO_UDP).build(&udp(7000, 53, &payload(4))),
    );
    assert_eq!(tiny.len(), 46);
    p.run(Hook::TcIngress, &tiny);
    let options = ip4(IPPROTO_UDP)
        .options(&[0x94, 0x04, 0x00, 0x00])
        .build(&udp(7000, 53, &payload(20)));
    p.run(Hook::TcIngress, &eth4(&options));
    p.run_gso(Hook::TcIngress, &udp_frame(3000), 3, 1000);
    for _ in 0..2 {
        p.run(Hook::TcEgress, &plain);
    }
    p.run(Hook::TcIngress, &tcp4_frame(41000, 443, SYN, 0));
    for _ in 0..2 {
        p.run(Hook::TcIngress, &tcp4_frame(41000, 443, ACK, 100));
    }
    p.run(Hook::TcIngress, &tcp4_frame(41000, 443, PSH | ACK, 10));
    p.run(Hook::TcIngress, &tcp4_frame(41000, 443, FIN | ACK, 0));
    // IPv6: plain (fast after the first), then the same stream behind a hop-by-hop
    // header (full path), and TCP with its flags OR'd.
    let v6 = |proto, l4: &[u8]| eth6(&Ipv6::new(a6(), b6(), proto).build(l4));
    let u6 = v6(IPPROTO_UDP, &udp(7000, 53, &payload(20)));
    for _ in 0..3 {
        p.run(Hook::TcIngress, &u6);
    }
    let hop = Ipv6::new(a6(), b6(), IPPROTO_UDP)
        .ext(Ext::HopByHop { len8: 0 })
        .build(&udp(7000, 53, &payload(20)));
    p.run(Hook::TcIngress, &eth6(&hop));
    p.run(
        Hook::TcIngress,
        &v6(IPPROTO_TCP, &tcp(41000, 443, SYN, &[])),
    );
    p.run(
        Hook::TcIngress,
        &v6(IPPROTO_TCP, &tcp(41000, 443, ACK, &payload(100))),
    );
    p.run(
        Hook::TcIngress,
        &v6(IPPROTO_TCP, &tcp(41000, 443, PSH | ACK, &payload(10))),
    );
    p.assert_flows(&[
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress)
            .ports(7000, 53)
            .count(4, 3 * 68 + 76),
        Exp::new(a6(), b6(), IPPROTO_TCP, Hook::TcIngress)
            .ports(41000, 443)
            .count(3, 60 + 160 + 70)
            .tcp(SYN | ACK | PSH, 0),
        Exp::new(A4, B4, IPPROTO_UDP, Hook::TcIngress)
            .ports(7000, 53)
            .count(4 + 1 + 1 + 1 + 3, 4 * 48 + 48 + 32 + 52 + (3028 + 2 * 28)),
        Exp::new(A4, B4, IPPROTO_UDP, Hook::TcEgress)
            .ports(7000, 53)
            .count(2, 2 * 48),
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress)
            .ports(41000, 443)
            .count(5, 40 + 2 * 140 + 50 + 40)
            .tcp(SYN | ACK | PSH | FIN, 1),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn ipv4_options_do_not_shift_ports() {
    let mut p = Progs::load();
    // IHL 6: router alert.
    let ra = ip4(IPPROTO_UDP)
        .options(&[0x94, 0x04, 0x00, 0x00])
        .build(&udp(5353, 53, &payload(10)));
    assert_eq!(ra.len(), 24 + 18);
    p.run(Hook::TcIngress, &eth4(&ra));
    // IHL 15: 40 bytes of options (NOPs then EOL).
    let mut opts = vec![1u8; 39];
    opts.push(0);
    let full = ip4(IPPROTO_TCP)
        .options(&opts)
        .build(&tcp(1234, 443, SYN | ACK, &[]));
    assert_eq!(full[0], 0x4f);
    p.run(Hook::TcIngress, &eth4(&full));
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_UDP, Hook::TcIngress)
            .ports(5353, 53)
            .count(1, 42),
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress)
            .ports(1234, 443)
            .count(1, 80)
            .tcp(SYN | ACK, 0),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn ethernet_padding_is_not_counted() {
    let mut p = Progs::load();
    let ip = ip4(IPPROTO_UDP).build(&udp(7, 9, &[]));
    assert_eq!(ip.len(), 28);
    let frame = eth4(&ip);
    assert_eq!(frame.len(), 60, "46 bytes of IP payload area, 28 used");
    p.run(Hook::TcIngress, &frame);
    p.run(Hook::TcEgress, &frame);
    p.run(Hook::TcEgress, &frame);
    let inb = Exp::new(A4, B4, IPPROTO_UDP, Hook::TcIngress)
        .ports(7, 9)
        .count(1, 28);
    let out = Exp::new(A4, B4, IPPROTO_UDP, Hook::TcEgress)
        .ports(7, 9)
        .count(2, 56);
    p.assert_flows(&[inb, out]);
    p.assert_counters(&[]);
}

#[test]
fn ipv6_transport_behind_extension_headers() {
    let mut p = Progs::load();
    let t = ip6_with_ext(IPPROTO_TCP, &tcp(50000, 8443, SYN, &[]));
    assert_eq!(t.len() as u64, 40 + EXT_LEN + 20);
    p.run(Hook::TcIngress, &eth6(&t));
    let u = ip6_with_ext(IPPROTO_UDP, &udp(5000, 6000, &payload(300)));
    p.run(Hook::TcIngress, &eth6(&u));
    p.run(Hook::TcIngress, &eth6(&u));
    // A plain IPv6 UDP packet of another stream (no extension headers).
    let plain = Ipv6::new(b6(), a6(), IPPROTO_UDP).build(&udp(6000, 5000, &payload(20)));
    p.run(Hook::TcIngress, &eth6(&plain));
    p.assert_flows(&[
        Exp::new(a6(), b6(), IPPROTO_TCP, Hook::TcIngress)
            .ports(50000, 8443)
            .count(1, 40 + EXT_LEN + 20)
            .tcp(SYN, 0),
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress)
            .ports(5000, 6000)
            .count(2, 2 * (40 + EXT_LEN + 308)),
        Exp::new(b6(), a6(), IPPROTO_UDP, Hook::TcIngress)
            .ports(6000, 5000)
            .count(1, 68),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn vlan_and_qinq_tagged_frames() {
    let mut p = Progs::load();
    let ip = ip4(IPPROTO_UDP).build(&udp(1111, 2222, &payload(50)));
    p.run(
        Hook::TcIngress,
        &ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IP, &ip),
    );
    p.run(
        Hook::TcIngress,
        &ethernet(&[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)], ETH_P_IP, &ip),
    );
    let ip6 = Ipv6::new(a6(), b6(), IPPROTO_UDP).build(&udp(1111, 2222, &payload(50)));
    p.run(
        Hook::TcIngress,
        &ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IPV6, &ip6),
    );
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_UDP, Hook::TcIngress)
            .ports(1111, 2222)
            .count(2, 2 * 78),
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress)
            .ports(1111, 2222)
            .count(1, 98),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn ipv4_fragments_share_the_stream_of_the_first() {
    let mut p = Progs::load();
    // Datagram: UDP header (8) + 52 bytes of data = 60 bytes, split 32 + 28.
    let data = payload(52);
    let first_l4 = udp_with_len(4000, 4001, 60, &data[..24]);
    assert_eq!(first_l4.len(), 32);
    let first = ip4(IPPROTO_UDP).fragment(0x1234, 0, true).build(&first_l4);
    let second = ip4(IPPROTO_UDP)
        .fragment(0x1234, 4, false)
        .build(&data[24..]);
    assert_eq!((first.len(), second.len()), (52, 48));
    p.run(Hook::TcIngress, &eth4(&first));
    p.run(Hook::TcIngress, &eth4(&second));
    // A non-first fragment of a datagram whose first fragment was never seen.
    let lone = ip4(IPPROTO_UDP)
        .fragment(0x9999, 10, false)
        .build(&payload(40));
    p.run(Hook::TcIngress, &eth4(&lone));
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_UDP, Hook::TcIngress)
            .ports(4000, 4001)
            .count(2, 100),
        Exp::new(A4, B4, IPPROTO_UDP, Hook::TcIngress).count(1, 60),
    ]);
    p.assert_counters(&[(counter::FRAG_UNKNOWN, 1)]);
}

#[test]
fn ipv6_fragments_share_the_stream_of_the_first() {
    let mut p = Progs::load();
    let data = payload(100);
    let frag = |offset: u16, more: bool, id: u32| {
        Ipv6::new(a6(), b6(), IPPROTO_UDP).ext(Ext::Fragment { offset, more, id })
    };
    // Datagram: UDP header + 100 bytes = 108 bytes, split 56 + 52.
    let first = frag(0, true, 0xabcdef01).build(&udp_with_len(7000, 7001, 108, &data[..48]));
    let second = frag(7, false, 0xabcdef01).build(&data[48..]);
    assert_eq!((first.len(), second.len()), (40 + 8 + 56, 40 + 8 + 52));
    p.run(Hook::TcIngress, &eth6(&first));
    p.run(Hook::TcIngress, &eth6(&second));
    let lone = frag(20, true, 0x55).build(&payload(16));
    p.run(Hook::TcIngress, &eth6(&lone));
    p.assert_flows(&[
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress)
            .ports(7000, 7001)
            .count(2, 104 + 100),
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress).count(1, 64),
    ]);
    p.assert_counters(&[(counter::FRAG_UNKNOWN, 1)]);
}

#[test]
fn a_streams_later_packets_take_the_cpu_cache() {
    let mut p = Progs::load();
    let frame = eth4(&ip4(IPPROTO_UDP).build(&udp(4000, 53, &payload(20))));
    for _ in 0..50 {
        p.run(Hook::TcEgress, &frame);
    }
    // The shared entry (its table slot) took the first packet (and one per CPU the
    // test thread moved to); the CPU caches the rest, and the drain view adds them up
    // exactly.
    let table = MappedTable::of(&p.ebpf, 0).expect("mapping generation 0 of TABLE");
    let shared: u64 = table.streams().iter().map(|(_, s)| s.packets).sum();
    assert!((1..50).contains(&shared), "shared entry packets: {shared}");
    p.assert_flows(&[Exp::new(A4, B4, IPPROTO_UDP, Hook::TcEgress)
        .ports(4000, 53)
        .count(50, 50 * 48)]);
    p.assert_counters(&[]);
}

#[test]
fn icmp_echoes_form_one_stream_without_ports() {
    let mut p = Progs::load();
    let echo =
        |typ, id, seq| eth4(&ip4(IPPROTO_ICMP).build(&icmp_echo(typ, id, seq, &payload(56))));
    p.run(Hook::TcEgress, &echo(8, 1, 1));
    p.run(Hook::TcEgress, &echo(8, 2, 7));
    p.run(Hook::TcEgress, &echo(0, 3, 1));
    let echo6 = |typ, id| {
        eth6(&Ipv6::new(a6(), b6(), IPPROTO_ICMPV6).build(&icmp_echo(typ, id, 1, &payload(56))))
    };
    p.run(Hook::TcEgress, &echo6(128, 1));
    p.run(Hook::TcEgress, &echo6(128, 9));
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_ICMP, Hook::TcEgress).count(3, 3 * 84),
        Exp::new(a6(), b6(), IPPROTO_ICMPV6, Hook::TcEgress).count(2, 2 * 104),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn other_protocols_with_and_without_ports() {
    let mut p = Progs::load();
    let gre_pkt = ip4(IPPROTO_GRE).build(&gre(&payload(30)));
    p.run(Hook::TcIngress, &eth4(&gre_pkt));
    p.run(Hook::TcIngress, &eth4(&gre_pkt));
    let sctp = ip4(IPPROTO_SCTP).build(&ports_header(3868, 3869, 12, &payload(16)));
    p.run(Hook::TcIngress, &eth4(&sctp));
    let udplite = ip4(IPPROTO_UDPLITE).build(&ports_header(5004, 5005, 8, &payload(12)));
    p.run(Hook::TcIngress, &eth4(&udplite));
    let dccp = ip4(IPPROTO_DCCP).build(&ports_header(6000, 5001, 16, &payload(8)));
    p.run(Hook::TcIngress, &eth4(&dccp));
    // Another unknown protocol over IPv6 (protocol 253, experimental).
    let exp6 = Ipv6::new(a6(), b6(), 253).build(&payload(24));
    p.run(Hook::TcIngress, &eth6(&exp6));
    let h = Hook::TcIngress;
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_GRE, h).count(2, 2 * (20 + 34)),
        Exp::new(A4, B4, IPPROTO_SCTP, h)
            .ports(3868, 3869)
            .count(1, 48),
        Exp::new(A4, B4, IPPROTO_UDPLITE, h)
            .ports(5004, 5005)
            .count(1, 40),
        Exp::new(A4, B4, IPPROTO_DCCP, h)
            .ports(6000, 5001)
            .count(1, 44),
        Exp::new(a6(), b6(), 253, h).count(1, 64),
    ]);
    p.assert_counters(&[]);
}

/// Runs `frame` through TC ingress, or through XDP when the kernel refuses the TC
/// test run (skb test runs check the network header of what they are given; XDP test
/// runs do not). Both hooks record direction IN on the same (loopback) ifindex.
fn run_ingress_somehow(p: &mut Progs, frame: &[u8]) {
    if let Err(e) = p.try_run(Hook::TcIngress, frame, None) {
        eprintln!(
            "kernel refused a TC test run of {} bytes ({e}); using XDP",
            frame.len()
        );
        p.run(Hook::Xdp, frame);
    }
}

#[test]
fn truncated_l2_l3_and_non_ip_frames() {
    let mut p = Progs::load();
    let mut l3_truncations = 0;
    // Frames shorter than an Ethernet header: the kernel refuses test runs of fewer
    // than 14 bytes; if it ever accepts one, the program must count a truncation.
    for hook in [Hook::TcIngress, Hook::Xdp] {
        match p.try_run(hook, &[0u8; 10], None) {
            Ok(()) => l3_truncations += 1,
            Err(e) => eprintln!("10-byte frame refused by the kernel for {hook:?}: {e}"),
        }
    }
    // 802.1Q tag cut after the TCI; IPv4 header cut at 10 bytes; IPv6 header cut at
    // 30 bytes. Each through both hooks where the kernel allows it.
    let ip = ip4(IPPROTO_UDP).build(&udp(1, 2, &[]));
    let ip6 = Ipv6::new(a6(), b6(), IPPROTO_UDP).build(&udp(1, 2, &[]));
    let cut = [
        ethernet_unpadded(&[], ETH_P_8021Q, &[0x00, 0x64]),
        ethernet_unpadded(&[], ETH_P_IP, &ip[..10]),
        ethernet_unpadded(&[], ETH_P_IPV6, &ip6[..30]),
    ];
    for frame in &cut {
        match p.try_run(Hook::TcIngress, frame, None) {
            Ok(()) => l3_truncations += 1,
            Err(e) => eprintln!("kernel refused a TC test run of {} bytes: {e}", frame.len()),
        }
        p.run(Hook::Xdp, frame);
        l3_truncations += 1;
    }
    // ARP, and an unknown ethertype (LLDP).
    p.run(Hook::TcIngress, &arp_frame());
    p.run(Hook::Xdp, &ethernet(&[], 0x88cc, &payload(30)));
    p.assert_flows(&[]);
    p.assert_counters(&[
        (counter::TRUNCATED_L3, l3_truncations),
        (counter::NOT_IP, 2),
        (counter::UNPLACED, l3_truncations + 2),
    ]);
}

#[test]
fn transport_header_is_bounded_by_the_ip_length() {
    let mut p = Progs::load();
    // A 20-byte IPv4 packet that says TCP but carries no TCP header, in a padded
    // 60-byte frame: the 26 bytes of Ethernet padding are not a TCP header.
    let bare = ip4(IPPROTO_TCP).build(&[]);
    assert_eq!(eth4(&bare).len(), 60);
    run_ingress_somehow(&mut p, &eth4(&bare));
    // Same over IPv6: payload length 0, next header UDP, frame padded from 54 to 60.
    let bare6 = Ipv6::new(a6(), b6(), IPPROTO_UDP).build(&[]);
    assert_eq!(eth6(&bare6).len(), 60);
    run_ingress_somehow(&mut p, &eth6(&bare6));
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress).count(1, 20),
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress).count(1, 40),
    ]);
    p.assert_counters(&[(counter::TRUNCATED_L4, 2)]);
}

#[test]
fn partial_transport_header_counts_without_ports() {
    let mut p = Progs::load();
    // A 30-byte IPv4 packet with only 10 bytes of its TCP header, frame not padded.
    let short = ip4(IPPROTO_TCP).build(&tcp(1000, 2000, SYN, &[])[..10]);
    assert_eq!(short.len(), 30);
    run_ingress_somehow(&mut p, &ethernet_unpadded(&[], ETH_P_IP, &short));
    // IPv6 with only 4 bytes of its UDP header (payload length 4), frame not padded.
    let short6 = Ipv6::new(a6(), b6(), IPPROTO_UDP).build(&udp(1000, 2000, &[])[..4]);
    run_ingress_somehow(&mut p, &ethernet_unpadded(&[], ETH_P_IPV6, &short6));
    // "L4 header truncated: counted with ports -" (flowlog-common, TRUNCATED_L4).
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress).count(1, 30),
        Exp::new(a6(), b6(), IPPROTO_UDP, Hook::TcIngress).count(1, 44),
    ]);
    p.assert_counters(&[(counter::TRUNCATED_L4, 2)]);
}

#[test]
fn gso_super_packets_count_every_segment() {
    let mut p = Progs::load();
    // IPv4: 4 segments of 800 bytes; each wire segment has its own 20 + 20 header.
    let data = payload(3200);
    let ip = ip4(IPPROTO_TCP).build(&tcp(33000, 5201, ACK | PSH, &data));
    assert_eq!(ip.len(), 40 + 3200);
    p.run_gso(Hook::TcIngress, &eth4(&ip), 4, 800);
    // IPv4 with TCP timestamps (header 20 + 32): 4 segments of 788 bytes.
    let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let data = payload(4 * 788);
    let ipts = ip4(IPPROTO_TCP).build(&tcp_with_options(33001, 5201, ACK, &ts, &data));
    assert_eq!(ipts.len(), 52 + 4 * 788);
    p.run_gso(Hook::TcEgress, &eth4(&ipts), 4, 788);
    // IPv6: 3 segments of 1000 bytes, each with 40 + 20 bytes of headers.
    let ip6 = Ipv6::new(a6(), b6(), IPPROTO_TCP).build(&tcp(33002, 5201, ACK, &payload(3000)));
    p.run_gso(Hook::TcEgress, &eth6(&ip6), 3, 1000);
    // gso_segs 1 (a plain packet that went through GSO code) counts once.
    let one = ip4(IPPROTO_TCP).build(&tcp(33003, 5201, ACK, &payload(500)));
    p.run_gso(Hook::TcIngress, &eth4(&one), 1, 500);
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress)
            .ports(33000, 5201)
            .count(4, 4 * 40 + 3200)
            .tcp(ACK | PSH, 0),
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcEgress)
            .ports(33001, 5201)
            .count(4, 4 * 52 + 4 * 788)
            .tcp(ACK, 0),
        Exp::new(a6(), b6(), IPPROTO_TCP, Hook::TcEgress)
            .ports(33002, 5201)
            .count(3, 3 * 60 + 3000)
            .tcp(ACK, 0),
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress)
            .ports(33003, 5201)
            .count(1, 540)
            .tcp(ACK, 0),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn egress_program_records_direction_out() {
    let mut p = Progs::load();
    let f = tcp4_frame(40000, 22, SYN, 0);
    p.run(Hook::TcEgress, &f);
    p.run(Hook::TcIngress, &f);
    p.run(Hook::TcEgress, &f);
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcEgress)
            .ports(40000, 22)
            .count(2, 80)
            .tcp(SYN, 0),
        Exp::new(A4, B4, IPPROTO_TCP, Hook::TcIngress)
            .ports(40000, 22)
            .count(1, 40)
            .tcp(SYN, 0),
    ]);
    p.assert_counters(&[]);
}

#[test]
fn xdp_program_parses_like_tc_ingress() {
    let mut p = Progs::load();
    let h = Hook::Xdp;
    p.run(h, &tcp4_frame(40000, 80, SYN, 0));
    p.run(h, &tcp4_frame(40000, 80, ACK | FIN, 10));
    let u = ip6_with_ext(IPPROTO_UDP, &udp(5000, 6000, &payload(300)));
    p.run(h, &eth6(&u));
    let v = ip4(IPPROTO_UDP).build(&udp(1111, 2222, &payload(50)));
    p.run(h, &ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IP, &v));
    p.run(
        h,
        &ethernet(&[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)], ETH_P_IP, &v),
    );
    // A lone non-first fragment in a padded 60-byte frame: 28 IP bytes.
    let frag = ip4(IPPROTO_UDP).fragment(0x77, 3, false).build(&payload(8));
    assert_eq!(eth4(&frag).len(), 60);
    p.run(h, &eth4(&frag));
    p.run(h, &arp_frame());
    p.assert_flows(&[
        Exp::new(A4, B4, IPPROTO_TCP, h)
            .ports(40000, 80)
            .count(2, 40 + 50)
            .tcp(SYN | ACK | FIN, 1),
        Exp::new(a6(), b6(), IPPROTO_UDP, h)
            .ports(5000, 6000)
            .count(1, 40 + EXT_LEN + 308),
        Exp::new(A4, B4, IPPROTO_UDP, h)
            .ports(1111, 2222)
            .count(2, 2 * 78),
        Exp::new(A4, B4, IPPROTO_UDP, h).count(1, 28),
    ]);
    p.assert_counters(&[
        (counter::FRAG_UNKNOWN, 1),
        (counter::NOT_IP, 1),
        (counter::UNPLACED, 1),
    ]);
}

/// Deterministic xorshift64* generator: the same frames on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Well-formed frames of every shape the parser knows, as mutation seeds.
fn seed_frames() -> Vec<Vec<u8>> {
    let v4 = ip4(IPPROTO_UDP).build(&udp(1111, 2222, &payload(60)));
    vec![
        tcp4_frame(40000, 80, SYN, 0),
        tcp4_frame(40001, 443, ACK | PSH, 200),
        eth4(&v4),
        eth6(&Ipv6::new(a6(), b6(), IPPROTO_UDP).build(&udp(5, 6, &payload(40)))),
        eth6(&ip6_with_ext(IPPROTO_TCP, &tcp(7, 8, SYN, &[]))),
        ethernet(&[(ETH_P_8021Q, 100)], ETH_P_IP, &v4),
        ethernet(&[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)], ETH_P_IP, &v4),
        eth4(
            &ip4(IPPROTO_UDP)
                .fragment(0x33, 0, true)
                .build(&udp(9, 10, &payload(100))),
        ),
        eth4(
            &ip4(IPPROTO_UDP)
                .fragment(0x33, 14, false)
                .build(&payload(40)),
        ),
        eth4(&ip4(IPPROTO_ICMP).build(&icmp_echo(8, 1, 1, &payload(56)))),
        eth4(&ip4(IPPROTO_GRE).build(&gre(&v4))),
        arp_frame(),
    ]
}

/// One mutation of `seed`: cut, corrupted bytes or length fields, deep VLAN stacks,
/// long IPv6 extension chains, or noise.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut f = seed.to_vec();
    match rng.below(7) {
        // Cut anywhere from the Ethernet header on.
        0 => f.truncate(14 + rng.below(f.len().saturating_sub(13))),
        // A few random bytes in the headers.
        1 => {
            for _ in 0..=rng.below(4) {
                let i = 12 + rng.below(f.len().min(96) - 12);
                f[i] = rng.next() as u8;
            }
        }
        // IPv4 total length / IPv6 payload length of any value.
        2 => {
            let at = if f.len() > 20 && f[12..14] == [0x86, 0xdd] {
                18
            } else {
                16
            };
            if f.len() > at + 1 {
                f[at..at + 2].copy_from_slice(&(rng.next() as u16).to_be_bytes());
            }
        }
        // Up to six VLAN tags in front of the IP packet (three are followed).
        3 => {
            let tags: Vec<(u16, u16)> = (0..=rng.below(6))
                .map(|i| {
                    let tpid = [ETH_P_8021Q, ETH_P_8021AD, 0x9100][rng.below(3)];
                    (tpid, i as u16)
                })
                .collect();
            let ethertype = u16::from_be_bytes([f[12], f[13]]);
            f = ethernet(&tags, ethertype, &f[14..]);
        }
        // IPv6 behind up to twelve extension headers (eight are followed).
        4 => {
            let mut ip = Ipv6::new(a6(), b6(), IPPROTO_UDP);
            for _ in 0..rng.below(13) {
                let len8 = rng.below(3) as u8;
                ip = ip.ext(if rng.below(2) == 0 {
                    Ext::HopByHop { len8 }
                } else {
                    Ext::DestOpts { len8 }
                });
            }
            f = eth6(&ip.build(&udp(1, 2, &payload(rng.below(64)))));
        }
        // An IPv4 header length (IHL) of any value.
        5 => {
            if f.len() > 14 && f[12..14] == [0x08, 0x00] {
                f[14] = 0x40 | (rng.next() as u8 & 0x0f);
            }
        }
        // Noise after a valid Ethernet header of a random type.
        _ => {
            let n = rng.below(120);
            let ethertype = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, 0x88cc][rng.below(4)];
            let noise: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            f = ethernet_unpadded(&[], ethertype, &noise);
        }
    }
    f
}

/// Thousands of cut, corrupted and exotic frames through every program: each run must
/// pass the packet (checked by every test run), the verifier-approved programs must
/// never fault, and every frame is accounted for exactly once: `seen` = packets of
/// the streams (one per frame: no GSO here) + `unplaced`.
#[test]
fn mutated_frames_are_passed_and_conserved() {
    let mut p = Progs::load();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = seed_frames();
    let mut refused = 0u64;
    for i in 0..3000 {
        let seed = &seeds[i % seeds.len()];
        let frame = mutate(&mut rng, seed);
        for hook in [Hook::TcIngress, Hook::TcEgress, Hook::Xdp] {
            if p.try_run(hook, &frame, None).is_err() {
                refused += 1;
            }
        }
    }
    let c = p.counters();
    let placed: u64 = p.flows().iter().map(|(_, s)| s.packets).sum();
    eprintln!(
        "{} frames run ({refused} test runs refused by the kernel), {placed} placed in {} streams, {} unplaced",
        p.frames,
        p.flows().len(),
        c[counter::UNPLACED as usize]
    );
    assert!(p.frames >= 8000, "too few test runs accepted: {}", p.frames);
    assert_eq!(c[counter::SEEN as usize], p.frames, "seen");
    assert_eq!(
        placed + c[counter::UNPLACED as usize],
        p.frames,
        "every frame is in a stream or unplaced; counters {c:?}"
    );
    for k in [
        counter::FLOW_MAP_FULL,
        counter::SKIP_MAP_FULL,
        counter::MAP_ERROR,
    ] {
        assert_eq!(c[k as usize], 0, "{}", counter::NAMES[k as usize]);
    }
    // The mutations reached the parser's refusal paths.
    for k in [
        counter::NOT_IP,
        counter::TRUNCATED_L3,
        counter::TRUNCATED_L4,
        counter::MALFORMED,
    ] {
        assert!(c[k as usize] > 0, "no {} case", counter::NAMES[k as usize]);
    }
}

/// The verifier's work per program (`bpf_prog_info.verified_insns`) stays far below the
/// kernel's limit of 1,000,000 instructions: a program near it loads slowly and breaks
/// with the next feature or on another kernel. Printed for the record.
#[test]
fn verifier_work_stays_within_budget() {
    const BUDGET: u32 = VERIFIER_BUDGET;
    let p = Progs::load();
    for name in [names::TC_INGRESS, names::TC_EGRESS, names::XDP_INGRESS] {
        let info = match p.ebpf.program(name).expect("program") {
            aya::programs::Program::SchedClassifier(c) => c.info(),
            aya::programs::Program::Xdp(x) => x.info(),
            _ => unreachable!("{name} is a TC or XDP program"),
        }
        .expect("program info");
        let insns = info
            .verified_instruction_count()
            .expect("the kernel reports verified_insns (Linux 5.16+)");
        println!("{name}: {insns} instructions verified");
        assert!(
            insns <= BUDGET,
            "{name}: the verifier processed {insns} instructions (budget {BUDGET}, limit 1,000,000)"
        );
    }
}

/// The egress program, for tests that run it from several threads.
fn tc_egress(p: &Progs) -> &SchedClassifier {
    p.ebpf
        .program(names::TC_EGRESS)
        .unwrap()
        .try_into()
        .unwrap()
}

/// One test run of `frame` through `prog` on the calling thread's CPU; the observer
/// passes it on.
fn run_here(prog: &SchedClassifier, frame: &[u8]) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("test run");
    assert_eq!(r.return_value, TC_ACT_UNSPEC);
}

/// Pins the calling thread to `cpu` (false if the machine has no such CPU).
fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Each CPU counts a stream's cached packets in its own `CACHE` element (`cpu * 2 +
/// generation`), and the drain adds the CPUs' elements up: one stream, ten packets from
/// CPU 0 and then ten from CPU 1. On each CPU the first packet takes the shared table
/// slot (and claims that CPU's cache slot), the other nine the CPU's cache.
#[test]
fn each_cpu_caches_in_its_own_element() {
    if aya::util::nr_cpus().map_or(1, |n| n) < 2 {
        eprintln!("skipped: needs two CPUs");
        return;
    }
    let mut p = Progs::load();
    let frame = eth4(&ip4(IPPROTO_UDP).build(&udp(4000, 53, &payload(20))));
    {
        let prog = tc_egress(&p);
        for cpu in [0, 1] {
            std::thread::scope(|s| {
                s.spawn(|| {
                    assert!(pin_to(cpu), "pinning to CPU {cpu}");
                    for _ in 0..10 {
                        run_here(prog, &frame);
                    }
                });
            });
        }
    }
    let cache: Array<_, CpuCache> =
        Array::try_from(p.ebpf.map(names::CACHE).expect("CACHE map")).expect("CACHE array");
    let cached: Vec<u64> = (0..cache.len())
        .map(|e| {
            let slots = cache.get(&e, 0).expect("CACHE element");
            slots.iter().filter(|s| s.tag == 1).map(|s| s.packets).sum()
        })
        .collect();
    let mut want = vec![0u64; cached.len()];
    want[0] = 9; // CPU 0, generation 0
    want[2] = 9; // CPU 1, generation 0
    assert_eq!(cached, want, "packets cached per CACHE element");
    let table = MappedTable::of(&p.ebpf, 0).expect("mapping generation 0 of TABLE");
    let shared: u64 = table.streams().iter().map(|(_, s)| s.packets).sum();
    assert_eq!(shared, 2, "one packet per CPU in the shared slot");
    let mut maps = flowlog_agent::drain::FlowMaps::take(&mut p.ebpf, MAX_FLOWS).expect("maps");
    let drained = maps.switch_and_drain().expect("drain");
    let got: Vec<(u16, u64, u64)> = drained
        .flows
        .iter()
        .map(|(k, s)| (k.src_port, s.packets, s.bytes))
        .collect();
    assert_eq!(
        got,
        vec![(4000, 20, 20 * 48)],
        "the drain adds both CPUs up"
    );
}

/// Two CPUs run the same 5,000 new streams at the same moment, frame for frame: they
/// race to claim each stream's table slot (compare-and-swap), and a loser counts in
/// the slot the winner published, or in the overflow map while the slot is still
/// being written. The drain must report every stream once, with both packets.
#[test]
fn cpus_racing_on_new_streams_count_each_once() {
    let mut p = Progs::load();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    const N: u16 = 5000;
    let frames: Vec<Vec<u8>> = (1..=N)
        .map(|sport| eth4(&ip4(IPPROTO_UDP).build(&udp(sport, 53, &payload(20)))))
        .collect();
    let start = std::sync::Barrier::new(2);
    {
        let prog = tc_egress(&p);
        std::thread::scope(|s| {
            for t in 0..2 {
                let (frames, start) = (&frames, &start);
                s.spawn(move || {
                    pin_to(t % cpus);
                    start.wait();
                    for f in frames {
                        run_here(prog, f);
                    }
                });
            }
        });
    }
    let overflow: HashMap<_, FlowKey, FlowStats> =
        HashMap::try_from(p.ebpf.map(names::FLOWS[0]).expect("FLOWS_0 map")).unwrap();
    let in_overflow = overflow.keys().count();
    let mut maps = flowlog_agent::drain::FlowMaps::take(&mut p.ebpf, MAX_FLOWS).expect("maps");
    let drained = maps.switch_and_drain().expect("drain");
    println!(
        "{cpus} CPUs: {} streams drained, {in_overflow} overflow entries",
        drained.flows.len()
    );
    assert_eq!(drained.flows.len(), N as usize, "every stream once");
    let mut ports: Vec<u16> = drained.flows.iter().map(|(k, _)| k.src_port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), N as usize, "no stream twice");
    for (k, s) in &drained.flows {
        assert_eq!(
            (s.packets, s.bytes),
            (2, 2 * 48),
            "stream from port {}: both CPUs' packets",
            k.src_port
        );
    }
    assert!(drained.skipped.is_empty());
}

/// Generation 1 lives in the second half of `INDEX` and `TABLE` and in the odd
/// elements of `CACHE`: after a switch the programs place new streams there (index
/// entries numbering slots after generation 0's), their later packets go to the CPU's
/// generation-1 cache,
/// and the drain reads, merges (with an overflow entry of the same stream, found
/// through the index) and empties them; generation 0's half stays untouched.
#[test]
fn generation_one_uses_its_half_of_every_map() {
    let mut p = Progs::load();
    let mut maps = flowlog_agent::drain::FlowMaps::take(&mut p.ebpf, MAX_FLOWS).expect("maps");
    // Window 1 (generation 0) ends empty; generation 1 is active from here.
    assert!(maps.switch_and_drain().expect("drain").flows.is_empty());
    let frame = |sport: u16| eth4(&ip4(IPPROTO_UDP).build(&udp(sport, 53, &payload(20))));
    for sport in 1..=3u16 {
        for _ in 0..sport {
            p.run(Hook::TcEgress, &frame(sport));
        }
    }
    assert!(
        MappedTable::of(&p.ebpf, 0)
            .expect("generation 0")
            .streams()
            .is_empty(),
        "generation 0's slots written while generation 1 is active"
    );
    // Each stream's first packet is in its slot, the later ones in the CPU cache.
    let placed = maps.table_mut(1).streams();
    let mut firsts: Vec<(u16, u64)> = placed
        .iter()
        .map(|(k, s)| (k.src_port, s.packets))
        .collect();
    firsts.sort();
    assert_eq!(firsts, vec![(1, 1), (2, 1), (3, 1)]);
    // Stream 1 also in generation 1's overflow map, as a CPU that lost a race leaves it.
    let (k1, s1) = *placed
        .iter()
        .find(|(k, _)| k.src_port == 1)
        .expect("stream 1");
    let extra = FlowStats {
        packets: 4,
        bytes: 400,
        first_ns: s1.first_ns,
        last_ns: s1.last_ns,
        tcp_flags: 0,
        ..FlowStats::default()
    };
    maps.overflow_mut(1)
        .insert(k1, extra, 0)
        .expect("overflow entry");
    let mut drained = maps.switch_and_drain().expect("drain").flows;
    drained.sort_by_key(|(k, _)| k.src_port);
    let got: Vec<(u16, u64, u64)> = drained
        .iter()
        .map(|(k, s)| (k.src_port, s.packets, s.bytes))
        .collect();
    // 48 IP bytes per packet (IPv4 20 + UDP 8 + 20).
    assert_eq!(got, vec![(1, 1 + 4, 48 + 400), (2, 2, 96), (3, 3, 144)]);
    // Both generations were emptied.
    assert!(maps.switch_and_drain().expect("drain").flows.is_empty());
    assert!(maps.switch_and_drain().expect("drain").flows.is_empty());
}

/// A stream placed both in the table and in the overflow map (the race above, when
/// the wait for the other CPU's entry runs out) is drained as one record: counters
/// added, the earliest first packet, the latest last packet, flags OR'd. A slot
/// handed out to an overflow stream stays unused and is skipped.
#[test]
fn the_drain_merges_a_stream_placed_in_two_places() {
    let mut p = Progs::load();
    let mut maps = flowlog_agent::drain::FlowMaps::take(&mut p.ebpf, MAX_FLOWS).expect("maps");
    let key = |port: u16| FlowKey {
        ifindex: 7,
        src_port: port,
        dst_port: 80,
        protocol: 6,
        family: family::IPV4,
        direction: direction::IN,
        action: action::ACCEPT,
        flags: key_flags::PORTS,
        traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
        ..FlowKey::default()
    };
    let stats = |packets: u64, first: u64, last: u64, flags: u8| FlowStats {
        packets,
        bytes: packets * 100,
        first_ns: first,
        last_ns: last,
        tcp_flags: flags,
        ..FlowStats::default()
    };
    let table = maps.table_mut(0);
    assert!(table.insert(0, &key(1), &stats(7, 400, 500, 0x12)));
    assert!(table.insert(2, &key(2), &stats(5, 100, 100, 0x10)));
    let overflow = maps.overflow_mut(0);
    overflow
        .insert(key(1), stats(6, 450, 900, 0x01), 0)
        .unwrap();
    overflow
        .insert(key(3), stats(7, 200, 200, 0x18), 0)
        .unwrap();
    maps.set_fill(0, 4).unwrap();
    let mut drained = maps.switch_and_drain().expect("drain").flows;
    drained.sort_by_key(|(k, _)| k.src_port);
    let got: Vec<(u16, u64, u64, u64, u64, u8)> = drained
        .iter()
        .map(|(k, s)| {
            (
                k.src_port,
                s.packets,
                s.bytes,
                s.first_ns,
                s.last_ns,
                s.tcp_flags,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 13, 1300, 400, 900, 0x13),
            (2, 5, 500, 100, 100, 0x10),
            (3, 7, 700, 200, 200, 0x18),
        ]
    );
    // The generation was emptied: the next drain of it finds nothing.
    assert!(maps.switch_and_drain().expect("drain").flows.is_empty());
    assert!(maps.switch_and_drain().expect("drain").flows.is_empty());
}
