//! Program entries, maps and the packet parser. See the crate header for the data path.
use core::{
    intrinsics::{atomic_or, atomic_xadd, AtomicOrdering},
    mem::size_of,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    cty::c_void,
    helpers::{
        bpf_ktime_get_coarse_ns,
        generated::{bpf_loop, bpf_xdp_load_bytes},
    },
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use flowlog_common::{
    action, counter, direction, family, key_flags, policy, CidrKey, CtKey, CtValue, FlowKey,
    FlowStats, FragKey, FragPorts, PolicyBinding, Rule, SkipKey, SkipStats,
    TRAFFIC_PATH_UNCLASSIFIED,
};

/// Default capacities; the agent sets the real ones at load time.
const FLOWS_MAX: u32 = 65536;
const SKIPPED_MAX: u32 = 16384;

/// The streams of a window: one shared entry per stream (not one per CPU), counters
/// added atomically. Memory does not grow with the CPU count, and a drain copies one
/// value per stream.
#[map(name = "FLOWS_0")]
static FLOWS_0: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOWS_MAX, 0);
#[map(name = "FLOWS_1")]
static FLOWS_1: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOWS_MAX, 0);
#[map(name = "SKIPPED_0")]
static SKIPPED_0: HashMap<FlowKey, u8> = HashMap::with_max_entries(SKIPPED_MAX, 0);
#[map(name = "SKIPPED_1")]
static SKIPPED_1: HashMap<FlowKey, u8> = HashMap::with_max_entries(SKIPPED_MAX, 0);
/// Skip counters per (interface, generation): shared entries, atomic adds.
#[map(name = "SKIP_STATS")]
static SKIP_STATS: HashMap<SkipKey, SkipStats> = HashMap::with_max_entries(4096, 0);
#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::with_max_entries(flowlog_common::config::COUNT, 0);
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
#[map(name = "FRAGS")]
static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(8192, 0);

#[map(name = "POL_BIND_0")]
static POL_BIND_0: HashMap<u32, PolicyBinding> = HashMap::with_max_entries(4096, 0);
#[map(name = "POL_BIND_1")]
static POL_BIND_1: HashMap<u32, PolicyBinding> = HashMap::with_max_entries(4096, 0);
#[map(name = "POL_CIDR_0")]
static POL_CIDR_0: LpmTrie<CidrKey, u64> = LpmTrie::with_max_entries(policy::MAX_CIDRS, 0);
#[map(name = "POL_CIDR_1")]
static POL_CIDR_1: LpmTrie<CidrKey, u64> = LpmTrie::with_max_entries(policy::MAX_CIDRS, 0);
#[map(name = "POL_RULE_0")]
static POL_RULE_0: Array<Rule> =
    Array::with_max_entries(policy::MAX_RULE_SETS * policy::MAX_RULES, 0);
#[map(name = "POL_RULE_1")]
static POL_RULE_1: Array<Rule> =
    Array::with_max_entries(policy::MAX_RULE_SETS * policy::MAX_RULES, 0);
#[map(name = "CONNTRACK")]
static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(policy::MAX_TRACKED, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_P_QINQ_OLD: u16 = 0x9100;
/// 802.1Q / 802.1ad tags followed (outer S-tag, inner C-tag, one spare).
const MAX_VLAN_TAGS: usize = 3;
/// IPv6 extension headers followed before giving up on reaching L4.
const MAX_IPV6_EXT: usize = 8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_MH: u8 = 135;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

const EEXIST: i32 = -17;

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

#[xdp]
pub fn flowlog_xdp_ingress(ctx: XdpContext) -> u32 {
    if observe(&Xdp(&ctx), direction::IN) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Read access to a packet, bounds-checked by the kernel helpers.
trait Packet {
    /// Reads a `T` at `offset` from the start of the frame.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
    /// Frame length as the program sees it (linear + paged data).
    fn len(&self) -> u32;
    fn ifindex(&self) -> u32;
    /// Wire segments this frame stands for (GSO/GRO super-packets), at least 1.
    fn segments(&self) -> u32;
    /// Logs (through aya-log) that the flow map overflowed on `ifindex`: once per
    /// interface per window, never per packet.
    fn warn_overflow(&self, ifindex: u32);
}

struct Skb<'a>(&'a TcContext);

/// Headers beyond this offset are read through the helper only (keeps the
/// verifier's bound on direct packet access small).
const MAX_DIRECT_OFFSET: usize = 256;

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

struct Xdp<'a>(&'a XdpContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
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
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot; BPF programs on one CPU do not preempt each other.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn be16(v: [u8; 2]) -> u16 {
    u16::from_be_bytes(v)
}

/// What the parser learnt about one frame.
struct Parsed {
    key: FlowKey,
    /// IP-layer bytes of the wire packets this frame stands for.
    bytes: u64,
    packets: u64,
    tcp_flags: u8,
    /// Policy rule that decided (see `flowlog_common::policy::RULE_*`).
    rule_id: u32,
}

/// Counts the frame; returns true when an enforcing rule set rejected it (the
/// caller drops it). Anything that cannot be parsed is passed.
#[inline(always)]
fn observe<P: Packet>(pkt: &P, dir: u8) -> bool {
    bump(counter::SEEN);
    let Some(mut p) = parse(pkt, dir) else {
        return false;
    };
    let drop = decide(&mut p);
    if record(&p) == Recorded::FirstSkip {
        pkt.warn_overflow(p.key.ifindex);
    }
    drop
}

/// Evaluates the security policy for the parsed packet: sets the verdict in its key
/// and the deciding rule; returns true when the packet must be dropped (enforce).
#[inline(always)]
fn decide(p: &mut Parsed) -> bool {
    // No rule set bound anywhere: skip the binding lookup.
    if CONFIG
        .get(flowlog_common::config::POLICY_BOUND)
        .is_none_or(|n| *n == 0)
    {
        p.rule_id = policy::RULE_NONE;
        return false;
    }
    let epoch = match CONFIG.get(flowlog_common::config::POLICY_EPOCH) {
        Some(e) => *e,
        None => 0,
    };
    let g = epoch & 1;
    let bindings = if g == 0 { &POL_BIND_0 } else { &POL_BIND_1 };
    // SAFETY: read-only use of a value the agent writes only in the inactive generation.
    let Some(b) = (unsafe { bindings.get(p.key.ifindex) }) else {
        p.rule_id = policy::RULE_NONE;
        return false;
    };
    let b = *b;
    let dir = p.key.direction;
    let stateful = b.flags & policy::FLAG_STATEFUL != 0;
    let enforce = b.flags & policy::FLAG_ENFORCE != 0;
    let ct = if stateful { Some(ct_key(&p.key)) } else { None };
    if let Some(ct) = &ct {
        if let Some(v) = CONNTRACK.get_ptr_mut(ct) {
            // SAFETY: value pointer returned by the map for this key.
            let v = unsafe { &mut *v };
            if v.epoch != epoch {
                // Re-judge the connection by its opening packet's direction.
                let swap = v.opened != dir;
                if swap {
                    reverse(&mut p.key);
                }
                let (verdict, rule_id) = match_rules(&p.key, &b, g);
                if swap {
                    reverse(&mut p.key);
                }
                v.epoch = epoch;
                v.action = verdict;
                v.rule_id = rule_id;
            }
            p.key.action = v.action;
            p.rule_id = if v.opened == dir {
                v.rule_id
            } else {
                policy::RULE_TRACKED
            };
            if v.action == action::ACCEPT {
                return false;
            }
            bump(counter::POLICY_REJECT);
            if enforce {
                bump(counter::POLICY_DROP);
                return true;
            }
            return false;
        }
    }
    let (verdict, rule_id) = if stateful {
        match_rules(&p.key, &b, g)
    } else {
        cached_match(&p.key, &b, g, epoch)
    };
    p.key.action = verdict;
    p.rule_id = rule_id;
    // Audit: remember rejected connections too, so that their later packets and
    // replies keep the verdict enforce would have given them.
    if verdict == action::ACCEPT || !enforce {
        if let Some(ct) = &ct {
            let v = CtValue {
                epoch,
                rule_id,
                opened: dir,
                action: verdict,
                _pad: [0; 2],
            };
            if CONNTRACK.insert(ct, &v, 0).is_err() {
                bump(counter::CT_ERROR);
            }
        }
    }
    if verdict == action::ACCEPT {
        return false;
    }
    bump(counter::POLICY_REJECT);
    if enforce {
        bump(counter::POLICY_DROP);
        return true;
    }
    false
}

/// Turns a stream key into the key of the same stream seen in the other direction.
#[inline(always)]
fn reverse(k: &mut FlowKey) {
    core::mem::swap(&mut k.src_addr, &mut k.dst_addr);
    core::mem::swap(&mut k.src_port, &mut k.dst_port);
    k.direction ^= 1;
}

/// The connection a packet belongs to, the same key for both directions.
#[inline(always)]
fn ct_key(k: &FlowKey) -> CtKey {
    let inbound = k.direction == direction::IN;
    let (local_addr, remote_addr, local_port, remote_port) = if inbound {
        (k.dst_addr, k.src_addr, k.dst_port, k.src_port)
    } else {
        (k.src_addr, k.dst_addr, k.src_port, k.dst_port)
    };
    CtKey {
        ifindex: k.ifindex,
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        protocol: k.protocol,
        family: k.family,
        _pad: [0; 2],
    }
}

/// First rule, in priority order, whose peer CIDR, protocol and destination port
/// match; else the direction's default. Bounded: at most `policy::MAX_RULES` rules.
#[inline(always)]
fn match_rules(k: &FlowKey, b: &PolicyBinding, g: u32) -> (u8, u32) {
    let dir = k.direction;
    let default_action = if dir == direction::IN {
        b.default_action[0]
    } else {
        b.default_action[1]
    };
    let default = (default_action, policy::RULE_DEFAULT);
    let peer = if dir == direction::IN {
        k.src_addr
    } else {
        k.dst_addr
    };
    let lpm = LpmKey::new(
        policy::CIDR_KEY_PREFIX_BITS + 128,
        CidrKey {
            set_id: b.set_id,
            direction: dir,
            family: k.family,
            _pad: [0; 2],
            addr: peer,
        },
    );
    let cidrs = if g == 0 { &POL_CIDR_0 } else { &POL_CIDR_1 };
    let Some(bits) = cidrs.get(&lpm) else {
        return default;
    };
    let mut walk = RuleWalk {
        bits: *bits,
        base: b.set_id * policy::MAX_RULES,
        generation: g,
        dst_port: k.dst_port,
        protocol: k.protocol,
        has_ports: (k.flags & key_flags::PORTS != 0) as u8,
        found: 0,
        action: 0,
        rule_id: 0,
    };
    // bpf_loop: the verifier checks the callback once instead of every unrolled
    // iteration on every parse path (which made loading take seconds).
    // SAFETY: `rule_step` has the callback signature bpf_loop expects and `walk`
    // outlives the call.
    unsafe {
        bpf_loop(
            (b.rule_count as u32).min(policy::MAX_RULES),
            rule_step as *const () as *mut c_void,
            &mut walk as *mut RuleWalk as *mut c_void,
            0,
        )
    };
    if walk.found != 0 {
        (walk.action, walk.rule_id)
    } else {
        default
    }
}

/// A verdict of a stateless rule set, remembered per CPU: the rules' answer depends
/// only on what a slot holds (interface, direction, family, peer address, protocol,
/// destination port) and on the policy epoch, so a slot of the current epoch with the
/// same inputs gives the rule walk's answer without the LPM lookup and the walk.
#[repr(C)]
#[derive(Clone, Copy)]
struct VerdictSlot {
    peer: [u8; 16],
    ifindex: u32,
    /// Policy epoch the verdict was computed in; any reload changes it.
    epoch: u32,
    rule_id: u32,
    dst_port: u16,
    direction: u8,
    family: u8,
    protocol: u8,
    has_ports: u8,
    /// 1 once the slot holds a verdict.
    valid: u8,
    action: u8,
}

/// Slots of the per-CPU verdict cache (a power of two); a collision only costs a
/// rule walk.
const VERDICT_SLOTS: u32 = 1024;

#[map(name = "VERDICTS")]
static VERDICTS: PerCpuArray<VerdictSlot> = PerCpuArray::with_max_entries(VERDICT_SLOTS, 0);

/// [`match_rules`] through the per-CPU verdict cache (stateless rule sets).
#[inline(always)]
fn cached_match(k: &FlowKey, b: &PolicyBinding, g: u32, epoch: u32) -> (u8, u32) {
    let dir = k.direction;
    let peer = if dir == direction::IN {
        k.src_addr
    } else {
        k.dst_addr
    };
    let has_ports = (k.flags & key_flags::PORTS != 0) as u8;
    let dst_port = if has_ports != 0 { k.dst_port } else { 0 };
    // SAFETY: [u8; 16] and [u32; 4] have the same size, every bit pattern is valid.
    let w: [u32; 4] = unsafe { core::mem::transmute(peer) };
    let mix = w[0]
        ^ w[1].rotate_left(7)
        ^ w[2].rotate_left(13)
        ^ w[3].rotate_left(19)
        ^ k.ifindex.wrapping_mul(0x85eb_ca6b)
        ^ ((dst_port as u32) << 16 | (k.protocol as u32) << 8 | dir as u32);
    let idx = mix.wrapping_mul(0x9e37_79b1) >> (32 - VERDICT_SLOTS.trailing_zeros());
    let Some(slot) = VERDICTS.get_ptr_mut(idx) else {
        return match_rules(k, b, g);
    };
    // SAFETY: this CPU's slot; programs on one CPU do not run concurrently.
    let slot = unsafe { &mut *slot };
    if slot.valid != 0
        && slot.epoch == epoch
        && slot.ifindex == k.ifindex
        && slot.peer == peer
        && slot.dst_port == dst_port
        && slot.protocol == k.protocol
        && slot.direction == dir
        && slot.family == k.family
        && slot.has_ports == has_ports
    {
        return (slot.action, slot.rule_id);
    }
    let (action, rule_id) = match_rules(k, b, g);
    *slot = VerdictSlot {
        peer,
        ifindex: k.ifindex,
        epoch,
        rule_id,
        dst_port,
        direction: dir,
        family: k.family,
        protocol: k.protocol,
        has_ports,
        valid: 1,
        action,
    };
    (action, rule_id)
}

/// State of the walk over a rule set's candidate rules.
#[repr(C)]
struct RuleWalk {
    /// Candidate rules (peer CIDR matched), bit i = i-th rule in priority order.
    bits: u64,
    base: u32,
    generation: u32,
    dst_port: u16,
    protocol: u8,
    has_ports: u8,
    found: u8,
    action: u8,
    rule_id: u32,
}

/// One step of the rule walk: returns 1 (stop) at the first matching rule.
extern "C" fn rule_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given in `match_rules`.
    let w = unsafe { &mut *(ctx as *mut RuleWalk) };
    if i >= policy::MAX_RULES || (w.bits >> i) & 1 == 0 {
        return 0;
    }
    let rules = if w.generation == 0 {
        &POL_RULE_0
    } else {
        &POL_RULE_1
    };
    let Some(r) = rules.get(w.base + i) else {
        return 1;
    };
    if r.protocol_any == 0 && r.protocol != w.protocol {
        return 0;
    }
    let all_ports = r.port_lo == 0 && r.port_hi == u16::MAX;
    if !all_ports && (w.has_ports == 0 || w.dst_port < r.port_lo || w.dst_port > r.port_hi) {
        return 0;
    }
    w.found = 1;
    w.action = r.action;
    w.rule_id = r.id;
    1
}

/// Parses a frame into its stream key and wire figures. `None` when the frame carries
/// no IP packet that can be placed in a stream (the reason is counted).
#[inline(always)]
fn parse<P: Packet>(pkt: &P, dir: u8) -> Option<Parsed> {
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
struct Ipv4Hdr {
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
struct Ipv6Hdr {
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
struct TcpHdr {
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
fn addr16(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size, every bit pattern is valid.
    unsafe { core::mem::transmute(words) }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(pkt: &P, off: usize, segs: u32, mut key: FlowKey) -> Option<Parsed> {
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
fn parse_ipv6<P: Packet>(pkt: &P, off: usize, segs: u32, mut key: FlowKey) -> Option<Parsed> {
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
fn parse_l4<P: Packet>(pkt: &P, off: usize, avail: usize, parsed: &mut Parsed) -> u32 {
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
fn set_ports(parsed: &mut Parsed, ports: u32) {
    let b = ports.to_ne_bytes();
    parsed.key.src_port = be16([b[0], b[1]]);
    parsed.key.dst_port = be16([b[2], b[3]]);
    parsed.key.flags |= key_flags::PORTS;
}

#[inline(always)]
fn first_fragment(key: &FlowKey, fk: &FragKey) {
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
fn later_fragment(key: &mut FlowKey, fk: &FragKey) {
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

#[inline(always)]
fn generation() -> u32 {
    match CONFIG.get(flowlog_common::config::GENERATION) {
        Some(g) => *g & 1,
        None => 0,
    }
}

#[derive(PartialEq, Eq)]
enum Recorded {
    /// Counted in the stream's counters (or lost to a map error, which is counted).
    Stream,
    /// Counted in the skip counters.
    Skipped,
    /// Counted in the skip counters, first time for this interface in this window.
    FirstSkip,
}

/// Coarse monotonic time (a few ns, jiffy resolution): records carry seconds.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn record(p: &Parsed) -> Recorded {
    let gen = generation();
    let flows = if gen == 0 { &FLOWS_0 } else { &FLOWS_1 };
    let closed = (p.tcp_flags & (TCP_FIN | TCP_RST) != 0) as u8;
    if let Some(s) = flows.get_ptr_mut(&p.key) {
        add(s, p, closed);
        return Recorded::Stream;
    }
    let now = now_ns();
    let fresh = FlowStats {
        packets: p.packets,
        bytes: p.bytes,
        first_ns: now,
        last_ns: now,
        tcp_flags: p.tcp_flags,
        closed,
        _pad: [0; 2],
        rule_id: p.rule_id,
    };
    match flows.insert(&p.key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU inserted the stream between our lookup and insert: add to it.
        Err(EEXIST) => match flows.get_ptr_mut(&p.key) {
            Some(s) => add(s, p, closed),
            None => bump(counter::MAP_ERROR),
        },
        Err(_) => return skip(p, gen),
    }
    Recorded::Stream
}

/// Adds a packet to an existing stream's shared counters. Packets and bytes are
/// atomic adds; the flag word (TCP flags | closed << 8) is atomically OR'd only when
/// the packet brings a new bit, so an established stream's packets write nothing else.
/// The clock is read only for streams that saw FIN/RST (their `end` is the last
/// packet); `first_ns` is set when the stream is inserted.
#[inline(always)]
fn add(s: *mut FlowStats, p: &Parsed, closed: u8) {
    // SAFETY: `s` points into a live element of a flow map (RCU keeps it valid for
    // this program run); every concurrent writer uses the atomic operations below, and
    // the agent reads this generation only after an RCU grace period that follows the
    // switch away from it. `tcp_flags`, `closed`, `_pad` and `rule_id` form one
    // 8-byte-aligned u64 at offset 32 (see `FlowStats`).
    unsafe {
        // The BPF target has no `AtomicU64::fetch_add`; the intrinsic, its result
        // unused, is one `lock xadd` instruction.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(addr_of_mut!((*s).packets), p.packets);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(addr_of_mut!((*s).bytes), p.bytes);
        // 64-bit: BPF without ALU32 has no 32-bit atomic OR. The word's upper half is
        // `rule_id`, which the OR leaves as it is.
        let word = addr_of_mut!((*s).tcp_flags) as *mut u64;
        let bits = p.tcp_flags as u64 | ((closed as u64) << 8);
        let cur = read_volatile(word);
        if cur | bits != cur {
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, bits);
        }
        if (cur | bits) & (1 << 8) != 0 {
            write_volatile(addr_of_mut!((*s).last_ns), now_ns());
        }
        if read_volatile(addr_of!((*s).rule_id)) != p.rule_id {
            write_volatile(addr_of_mut!((*s).rule_id), p.rule_id);
        }
    }
}

/// The flow map is full: count the packet per interface so the window's SKIPDATA
/// record says what was not recorded.
#[inline(never)]
fn skip(p: &Parsed, gen: u32) -> Recorded {
    bump(counter::FLOW_MAP_FULL);
    let skipped = if gen == 0 { &SKIPPED_0 } else { &SKIPPED_1 };
    let (new_stream, uncounted) = match skipped.insert(&p.key, &1u8, BPF_NOEXIST as u64) {
        Ok(()) => (1, 0),
        Err(EEXIST) => (0, 0),
        Err(_) => (0, p.packets),
    };
    let sk = SkipKey {
        ifindex: p.key.ifindex,
        generation: gen,
    };
    let add_to = |s: *mut SkipStats| {
        // SAFETY: a live element of SKIP_STATS (RCU keeps it valid for this run); every
        // writer adds atomically.
        unsafe {
            if new_stream != 0 {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    addr_of_mut!((*s).streams),
                    new_stream,
                );
            }
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                addr_of_mut!((*s).packets),
                p.packets,
            );
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(addr_of_mut!((*s).bytes), p.bytes);
            if uncounted != 0 {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    addr_of_mut!((*s).uncounted_stream_packets),
                    uncounted,
                );
            }
        }
    };
    if let Some(s) = SKIP_STATS.get_ptr_mut(&sk) {
        add_to(s);
        return Recorded::Skipped;
    }
    let fresh = SkipStats {
        streams: new_stream,
        packets: p.packets,
        bytes: p.bytes,
        uncounted_stream_packets: uncounted,
    };
    match SKIP_STATS.insert(&sk, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => return Recorded::FirstSkip,
        Err(EEXIST) => match SKIP_STATS.get_ptr_mut(&sk) {
            Some(s) => add_to(s),
            None => bump(counter::SKIP_MAP_FULL),
        },
        Err(_) => bump(counter::SKIP_MAP_FULL),
    }
    Recorded::Skipped
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
