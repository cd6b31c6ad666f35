//! Types shared by the flowlog eBPF programs (`flowlog-ebpf`) and the agent
//! (`flowlog-agent`).
//!
//! Everything here is ABI: the kernel programs write these structs into maps and the
//! agent reads the same bytes back. So every type is `#[repr(C)]`, uses fixed-width
//! integers only (no `bool`, no `Option`), spells out its padding, and has its size
//! pinned by a `const` assertion. Userspace-only conveniences live behind the `user`
//! feature so the eBPF side stays `no_std` and dependency-free.
#![cfg_attr(not(test), no_std)]

/// Traffic direction as seen by the interface.
pub mod direction {
    /// Arriving at the interface from the wire (TC ingress, XDP).
    pub const IN: u8 = 0;
    /// Leaving through the interface (TC egress).
    pub const OUT: u8 = 1;
}

/// Security-policy verdict of a stream (the `action` field).
pub mod action {
    pub const ACCEPT: u8 = 0;
    pub const REJECT: u8 = 1;
}

/// IP family of a stream (the `type` field).
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Bits of [`FlowKey::flags`].
pub mod key_flags {
    /// `src_port`/`dst_port` hold real ports. Clear for protocols without ports and for
    /// a non-first IP fragment whose first fragment was never seen.
    pub const PORTS: u8 = 1 << 0;
}

/// Value of [`FlowKey::traffic_path`] while the kernel does not classify paths.
pub const TRAFFIC_PATH_UNCLASSIFIED: u8 = 0xff;

/// Identity of one stream: 5-tuple, interface, direction and verdict.
///
/// Addresses are in network byte order; an IPv4 address occupies the first four bytes
/// of its 16-byte field and the rest is zero. Ports are in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number of the transport (after IPv6 extension headers).
    pub protocol: u8,
    /// [`family`] value.
    pub family: u8,
    /// [`direction`] value.
    pub direction: u8,
    /// [`action`] value.
    pub action: u8,
    /// [`key_flags`] bits.
    pub flags: u8,
    /// Always [`TRAFFIC_PATH_UNCLASSIFIED`] in the kernel: the path is decided once per
    /// stream, when its entry is made, and kept in [`FlowStats::traffic_path`] (so the
    /// per-packet lookup does not classify). The agent copies it here after a drain.
    pub traffic_path: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);

/// Counters of one stream in one window: one entry per stream shared by all CPUs,
/// `packets`/`bytes` added atomically, `tcp_flags`/`closed` atomically OR'd as the low
/// bytes of the 8-byte-aligned word at offset 32 (whose upper half is `rule_id`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Wire packets: a GSO/GRO super-packet of N segments counts N.
    pub packets: u64,
    /// IP-layer bytes of those wire packets (no L2 header, padding or FCS).
    pub bytes: u64,
    /// `CLOCK_MONOTONIC` (coarse) nanoseconds of the first packet.
    pub first_ns: u64,
    /// `CLOCK_MONOTONIC` (coarse) nanoseconds of the last packet once FIN/RST was
    /// seen (the record's `end`); for an open stream, the first packet's time.
    pub last_ns: u64,
    /// OR of the TCP flag bytes (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32, ...).
    pub tcp_flags: u8,
    /// 1 once a FIN or RST was seen on the stream in this window.
    pub closed: u8,
    /// traffic_path of the contract, decided when the entry was made
    /// ([`TRAFFIC_PATH_UNCLASSIFIED`] without a `[paths]` configuration).
    pub traffic_path: u8,
    pub _pad: u8,
    /// Id of the policy rule that decided the stream's last packet, or one of
    /// [`policy::RULE_NONE`], [`policy::RULE_DEFAULT`], [`policy::RULE_TRACKED`].
    pub rule_id: u32,
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 40);

/// One slot of a CPU's cache of hot streams (`CACHE`, see [`CpuCache`]): the
/// counters a CPU added to one stream since it claimed the slot in this window. The
/// stream's shared entry (its `TABLE` slot or `FLOWS_<gen>` overflow entry) exists (a cache slot
/// is claimed only after it), and the agent adds the cache slots of a generation to
/// those entries when it drains it, so a cached packet costs no shared lookup and no
/// atomic operation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSlot {
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    /// `CONFIG[GENERATION] + 1` of the window that claimed the slot; any other value
    /// (0 when never used) is an empty slot.
    pub tag: u32,
    /// Policy rule of the last cached packet.
    pub rule_id: u32,
    /// OR of the cached packets' TCP flags (FIN and RST never take the cache).
    pub tcp_flags: u8,
    pub _pad: [u8; 3],
    /// The key's hash (before it picked the slot): a miss is told by one compare.
    pub hash: u32,
}
const _: () = assert!(core::mem::size_of::<CacheSlot>() == 80);

/// Slots of a CPU's stream cache in one generation (a power of two).
pub const CACHE_SLOTS: u32 = 512;

/// One CPU's stream cache of one generation: element `cpu * 2 + generation` of the
/// `CACHE` array ([`cache_entries`] elements). A plain array indexed by the CPU rather
/// than a per-CPU array: a per-CPU array reaches each element through a pointer of
/// its own (one more cache line read per packet), where here a slot's address is its
/// CPU's element plus the slot's offset.
pub type CpuCache = [CacheSlot; CACHE_SLOTS as usize];
const _: () = assert!(core::mem::size_of::<CpuCache>() == 40960);

/// Elements of `CACHE` for `cpus` possible CPUs: one per CPU and generation.
pub const fn cache_entries(cpus: u32) -> u32 {
    cpus.saturating_mul(2)
}

/// The `CACHE` element of CPU `cpu`'s cache of generation `generation` (`& 1`).
pub const fn cache_element(cpu: u32, generation: u32) -> u32 {
    cpu.wrapping_mul(2).wrapping_add(generation & 1)
}

/// One slot of a window's flow table (`TABLE`, a `BPF_F_MMAPABLE` array): a
/// stream's key and counters, in the order streams were placed, so the agent reads a
/// drained generation sequentially from its memory mapping. `stats.packets == 0`: an
/// unused slot (a slot handed out to an overflow stream).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub stats: FlowStats,
}
const _: () = assert!(core::mem::size_of::<FlowSlot>() == 88);

/// The flow table's geometry and the hash that places streams in it (shared by the
/// programs and the agent, which repeats a lookup to merge the rare stream that two
/// CPUs placed twice).
pub mod table {
    use super::FlowKey;

    /// An index entry (`INDEX`) is `hash << 32 | low`, `low` one of these, or
    /// `SLOT_FIRST + i` once published with its stream in slot `i` of `TABLE` (slots
    /// of both generations are numbered together: generation 1's follow
    /// generation 0's `max_flows`).
    pub const SLOT_EMPTY: u64 = 0;
    pub const SLOT_WRITING: u64 = 1;
    /// Claimed after the window's `max_flows` streams were reached: points nowhere.
    pub const SLOT_DEAD: u64 = 2;
    pub const SLOT_FIRST: u64 = 3;

    /// Index entries probed from a stream's home entry before it goes to the
    /// overflow map.
    pub const PROBES: u32 = 16;

    /// Entries of one generation's index for `max_flows` streams: twice as many, so
    /// the index is at most half full and linear probes stay short.
    pub const fn index_slots(max_flows: u32) -> u32 {
        let s = max_flows as u64 * 2;
        if s < 16 {
            16
        } else if s > u32::MAX as u64 {
            u32::MAX
        } else {
            s as u32
        }
    }

    /// Entries of one generation's overflow hash map (streams whose probes found no
    /// slot, or that raced another CPU's claim of their slot).
    pub const fn overflow(max_flows: u32) -> u32 {
        let o = max_flows / 16;
        if o < 1024 {
            1024
        } else {
            o
        }
    }

    /// The stream's hash: a multiply-xor over the key words that tell streams apart
    /// in practice (interface, first and last word of each address, ports, protocol/
    /// family/direction/verdict), finished with murmur3's `fmix32`.
    #[inline(always)]
    pub fn hash(k: &FlowKey) -> u32 {
        let w = k as *const FlowKey as *const u32;
        // SAFETY: words `< 12` of a 48-byte, 4-aligned struct.
        let word = |i: usize| unsafe { core::ptr::read_volatile(w.add(i)) };
        let mut h: u32 = 0x9e37_79b9;
        h = (h ^ word(0)).wrapping_mul(0x0100_0193);
        h = (h ^ word(1)).wrapping_mul(0x0100_0193);
        h = (h ^ word(4)).wrapping_mul(0x0100_0193);
        h = (h ^ word(5)).wrapping_mul(0x0100_0193);
        h = (h ^ word(8)).wrapping_mul(0x0100_0193);
        h = (h ^ word(9)).wrapping_mul(0x0100_0193);
        h = (h ^ word(10)).wrapping_mul(0x0100_0193);
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    /// The home slot of `hash` in a table of `slots` slots.
    #[inline(always)]
    pub fn home(hash: u32, slots: u32) -> u32 {
        ((hash as u64 * slots as u64) >> 32) as u32
    }

    /// The index entry of a stream of `hash` published in slot `slot`.
    #[inline(always)]
    pub fn ready(hash: u32, slot: u32) -> u64 {
        (hash as u64) << 32 | (slot as u64 + SLOT_FIRST)
    }
}

/// Key of the per-interface skip counters: what could not be placed in a full window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SkipKey {
    pub ifindex: u32,
    /// Map generation (0 or 1) the skip belongs to, so that it is drained with the
    /// flows of the same window.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<SkipKey>() == 8);

/// Streams, packets and bytes that could not be recorded because the window held
/// `--max-flows` streams already.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkipStats {
    /// Distinct streams skipped (counted once each via the skipped-streams set).
    pub streams: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Packets of skipped streams that could not be told apart because the
    /// skipped-streams set was itself full: `streams` is then a lower bound.
    pub uncounted_stream_packets: u64,
}
const _: () = assert!(core::mem::size_of::<SkipStats>() == 32);

/// Indices of the `COUNTERS` per-CPU array: events the data path counts instead of
/// logging per packet.
pub mod counter {
    /// Packets seen by the programs (all frames, IP or not).
    pub const SEEN: u32 = 0;
    /// Frames that carry no IP packet (ARP, LLDP, MPLS...): no flow record.
    pub const NOT_IP: u32 = 1;
    /// L2 or L3 header truncated: the packet could not be placed in a stream.
    pub const TRUNCATED_L3: u32 = 2;
    /// L4 header truncated or IPv6 extension chain too long/truncated: counted with ports `-`.
    pub const TRUNCATED_L4: u32 = 3;
    /// Malformed IP header (bad version, IHL < 5...): counted where possible.
    pub const MALFORMED: u32 = 4;
    /// Non-first fragment whose first fragment was not seen: counted with ports `-`.
    pub const FRAG_UNKNOWN: u32 = 5;
    /// Flow map full: packet counted in the skip counters instead.
    pub const FLOW_MAP_FULL: u32 = 6;
    /// The skip counters map itself was full: the packet is lost to the log.
    pub const SKIP_MAP_FULL: u32 = 7;
    /// Any other map error.
    pub const MAP_ERROR: u32 = 8;
    /// Fragment-tracking map update failed (ports of later fragments unknown).
    pub const FRAG_MAP_ERROR: u32 = 9;
    /// Packets the policy rejected (enforced or audited).
    pub const POLICY_REJECT: u32 = 10;
    /// Packets dropped because an enforcing rule set rejected them.
    pub const POLICY_DROP: u32 = 11;
    /// Connection-tracking insert failed (a reply may be evaluated as new).
    pub const CT_ERROR: u32 = 12;
    /// Frames placed in no stream (not IP, truncated before the IP addresses, bad IP
    /// version): with the streams' packets (one per frame without GSO) this accounts for
    /// every frame `SEEN`.
    pub const UNPLACED: u32 = 13;
    /// Packets of new streams that no active flow log selects (IP version, data
    /// transfer type or traffic path of every instance on the interface): no flow-map
    /// entry was made for them.
    pub const NOT_SELECTED: u32 = 14;
    /// Number of counters.
    pub const COUNT: u32 = 16;

    /// Names for logs and metrics, indexed by counter.
    pub const NAMES: [&str; 15] = [
        "seen",
        "not_ip",
        "truncated_l3",
        "truncated_l4",
        "malformed",
        "frag_unknown",
        "flow_map_full",
        "skip_map_full",
        "map_error",
        "frag_map_error",
        "policy_reject",
        "policy_drop",
        "ct_error",
        "unplaced",
        "not_selected",
    ];
}

/// Key of the fragment map: identifies one IP datagram being fragmented.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub ifindex: u32,
    /// IPv4: 16-bit identification; IPv6: 32-bit identification of the fragment header.
    pub id: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub protocol: u8,
    pub direction: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);

/// Ports remembered from the first fragment of a datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    pub src_port: u16,
    pub dst_port: u16,
}
const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);

/// Indices of the `CONFIG` array map, written by the agent.
pub mod config {
    /// Window counter: `& 1` is the active generation of the flow maps; the whole
    /// value tags the stream cache's slots.
    pub const GENERATION: u32 = 0;
    /// Policy epoch: bumped at every policy (re)load. `epoch & 1` selects the active
    /// generation of the policy maps; tracked connections of older epochs are
    /// re-evaluated against the rules.
    pub const POLICY_EPOCH: u32 = 1;
    /// Interfaces with a rule set bound (0: the programs skip policy evaluation).
    pub const POLICY_BOUND: u32 = 2;
    /// Rules in `PATH_RULES` (0: no `[paths]`, streams stay unclassified).
    pub const PATH_RULE_COUNT: u32 = 3;
    /// The shape the maps were created with (`max_flows`, bit 31: policy maps full
    /// size): an agent adopts pinned maps only of its own shape.
    pub const SHAPE: u32 = 4;
    /// Unix seconds of the last generation switch: where the next window starts.
    pub const LAST_SWITCH_S: u32 = 5;
    /// `generation + 1` of the last generation whose records are out (0: none).
    pub const EMITTED: u32 = 6;
    /// [`super::LAYOUT_VERSION`] of the maps.
    pub const LAYOUT: u32 = 7;
    /// Unix seconds of the switch before the last: where the idle generation's window
    /// started (a successor that must emit it says so).
    pub const PREV_SWITCH_S: u32 = 8;
    /// Entries of each generation's flow-table index ([`super::table::index_slots`]
    /// of `MAX_FLOWS`); generation 1's follow generation 0's in `INDEX`.
    pub const TABLE_SLOTS: u32 = 9;
    /// Streams a window may hold (`--max-flows`): table and overflow together.
    pub const MAX_FLOWS: u32 = 10;
    pub const COUNT: u32 = 16;
}

/// Version of the kernel-side layout (map names, keys, values, `CONFIG` slots). 5:
/// flow table, CPU cache and policy maps hold both generations in one map each. 6: the
/// CPU cache is an array of [`CpuCache`] indexed by CPU and generation. Pinned
/// objects live under `<pin dir>/v<LAYOUT_VERSION>/`; an agent never reads maps of
/// another version.
pub const LAYOUT_VERSION: u32 = 6;

/// What the programs select per interface (`IFACES`, keyed by ifindex), written by the
/// agent from the active flow logs covering the interface, and the interface's role in
/// traffic_path classification. An interface without an entry selects everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConf {
    /// Bit `v` set: traffic_path value `v` is selected ([`select::ALL_PATHS`]: every
    /// value, and unclassified streams).
    pub paths: u32,
    /// [`select`] `IPV4 | IPV6 | ACCEPT | REJECT` bits.
    pub select: u8,
    /// Role id of the interface in the `PATH_RULES` (0: none).
    pub role: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<IfaceConf>() == 8);

/// Bits of [`IfaceConf::select`] and the path classification tables.
pub mod select {
    pub const IPV4: u8 = 1 << 0;
    pub const IPV6: u8 = 1 << 1;
    pub const ACCEPT: u8 = 1 << 2;
    pub const REJECT: u8 = 1 << 3;
    pub const ALL: u8 = IPV4 | IPV6 | ACCEPT | REJECT;
    /// [`super::IfaceConf::paths`]: every path, classified or not.
    pub const ALL_PATHS: u32 = u32::MAX;
    /// Rules of the traffic_path classification (first match wins).
    pub const MAX_PATH_RULES: u32 = 32;
    /// CIDRs of the classification's address sets.
    pub const MAX_PATH_CIDRS: u32 = 4096;
    /// Address sets (one bit each in the trie's value).
    pub const MAX_PATH_SETS: u32 = 64;
    /// [`super::PathRule`] fields that match anything.
    pub const ANY: u8 = 0xff;
    /// Bits of the path trie key before the address: the family.
    pub const PATH_KEY_PREFIX_BITS: u32 = 32;
}

/// One traffic_path rule (`PATH_RULES`, in order): a stream whose interface role,
/// direction and peer address set match gets `path`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRule {
    /// Interface role id, or [`select::ANY`].
    pub role: u8,
    /// [`direction`] value, or [`select::ANY`].
    pub direction: u8,
    /// Address set (bit index in the trie value) the peer must be in, or [`select::ANY`].
    pub set: u8,
    /// The traffic_path value.
    pub path: u8,
}
const _: () = assert!(core::mem::size_of::<PathRule>() == 4);

/// Data of the path trie key (`PATH_CIDRS`): family then address; the LPM prefix
/// length counts [`select::PATH_KEY_PREFIX_BITS`] plus the CIDR's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCidrKey {
    pub family: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PathCidrKey>() == 20);

/// Security policy as the kernel evaluates it: per interface a binding to a rule set;
/// per rule set an LPM trie mapping (direction, family, peer address) to the bitmap of
/// rules whose CIDR contains the address, and an array of rules in priority order.
///
/// Two generations (the agent writes the one the programs do not read, then flips
/// `CONFIG[POLICY_EPOCH]`), each in its part of the same maps: bindings are keyed by
/// [`super::BindingKey`] (interface and generation), and generation `g`'s rule sets
/// are numbered from `g * MAX_RULE_SETS` (their CIDR keys and rule indices follow). A
/// lookup in a map the verifier knows is inlined; one that picks between two maps is
/// not.
pub mod policy {
    /// Rules per rule set (one bit each in the LPM value).
    pub const MAX_RULES: u32 = 64;
    /// Rule sets per node.
    pub const MAX_RULE_SETS: u32 = 64;
    /// Entries of the CIDR trie per generation.
    pub const MAX_CIDRS: u32 = 16384;
    /// Interfaces bound to a rule set, per generation.
    pub const MAX_BINDINGS: u32 = 4096;
    /// Connections tracked for stateful rule sets (LRU).
    pub const MAX_TRACKED: u32 = 65536;

    /// [`super::PolicyBinding::flags`]: replies of accepted connections are accepted.
    pub const FLAG_STATEFUL: u8 = 1 << 0;
    /// [`super::PolicyBinding::flags`]: rejected packets are dropped (else audit only).
    pub const FLAG_ENFORCE: u8 = 1 << 1;

    /// [`super::Rule::protocol_any`] value: the rule matches every protocol.
    pub const ANY_PROTOCOL: u8 = 1;

    /// No rule set is bound to the interface: ACCEPT.
    pub const RULE_NONE: u32 = u32::MAX;
    /// No rule matched: the direction's default action decided.
    pub const RULE_DEFAULT: u32 = u32::MAX - 1;
    /// A tracked connection of a stateful rule set (a reply, or a later packet of an
    /// accepted connection).
    pub const RULE_TRACKED: u32 = u32::MAX - 2;
    /// Largest id a user may give a rule.
    pub const MAX_RULE_ID: u32 = u32::MAX - 16;

    /// Bits of the LPM key before the address: set id, direction, family, padding.
    pub const CIDR_KEY_PREFIX_BITS: u32 = 64;
}

/// Key of `POL_BIND`: an interface in one policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindingKey {
    pub ifindex: u32,
    /// `CONFIG[POLICY_EPOCH] & 1` of the policy the binding belongs to.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<BindingKey>() == 8);

/// Which rule set governs an interface (`POL_BIND`, keyed by [`BindingKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyBinding {
    /// The rule set's number in the map generation: its position in the policy file
    /// plus `generation * policy::MAX_RULE_SETS`.
    pub set_id: u32,
    /// Rules in the set (`<= policy::MAX_RULES`).
    pub rule_count: u8,
    /// [`policy`] `FLAG_*` bits.
    pub flags: u8,
    /// Default [`action`] per [`direction`] (index 0 ingress, 1 egress).
    pub default_action: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyBinding>() == 8);

/// Data of the CIDR trie key (`POL_CIDR`). The LPM prefix length counts
/// [`policy::CIDR_KEY_PREFIX_BITS`] plus the CIDR's own prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    /// [`PolicyBinding::set_id`] (generation included).
    pub set_id: u32,
    pub direction: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    /// Peer address (source for ingress, destination for egress), network order;
    /// IPv4 in the first four bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<CidrKey>() == 24);

/// One rule (`POL_RULE`, index `set_id * MAX_RULES + position`, `set_id` as in
/// [`PolicyBinding::set_id`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    /// Destination port range of the packet, inclusive; `0..=65535` matches every
    /// packet, including those without ports.
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocol: u8,
    /// [`policy::ANY_PROTOCOL`] or 0.
    pub protocol_any: u8,
    /// [`action`] value.
    pub action: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Rule>() == 12);

/// A connection tracked for a stateful rule set, the same for both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// Policy epoch under which the connection was judged.
    pub epoch: u32,
    /// Rule that judged the opening packet.
    pub rule_id: u32,
    /// Direction of the packet that opened it.
    pub opened: u8,
    /// Verdict of the connection.
    pub action: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 12);

/// Names of the maps and programs in the eBPF object.
pub mod names {
    pub const FLOWS: [&str; 2] = ["FLOWS_0", "FLOWS_1"];
    pub const SKIPPED_STREAMS: [&str; 2] = ["SKIPPED_0", "SKIPPED_1"];
    pub const SKIP_STATS: &str = "SKIP_STATS";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const FRAGS: &str = "FRAGS";
    /// Policy bindings, CIDR trie and rules: both generations in each (see [`super::policy`]).
    pub const POLICY_BINDINGS: &str = "POL_BIND";
    pub const POLICY_CIDRS: &str = "POL_CIDR";
    pub const POLICY_RULES: &str = "POL_RULE";
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const IFACES: &str = "IFACES";
    pub const PATH_RULES: &str = "PATH_RULES";
    pub const PATH_CIDRS: &str = "PATH_CIDRS";
    pub const VERDICTS: &str = "VERDICTS";
    /// The CPUs' stream caches: one [`super::CpuCache`] per CPU and generation.
    pub const CACHE: &str = "CACHE";
    /// The flow table's slots, both generations (`max_flows` slots each).
    pub const TABLE: &str = "TABLE";
    /// The flow table's hash index, both generations (`index_slots(max_flows)` each).
    pub const INDEX: &str = "INDEX";
    /// Streams placed per generation (table and overflow), against `CONFIG[MAX_FLOWS]`.
    pub const FILL: &str = "FILL";
    /// Every map pinned across agent restarts (all but the kernel log ring).
    pub const PINNED: [&str; 20] = [
        INDEX,
        TABLE,
        FILL,
        CACHE,
        FLOWS[0],
        FLOWS[1],
        SKIPPED_STREAMS[0],
        SKIPPED_STREAMS[1],
        SKIP_STATS,
        CONFIG,
        COUNTERS,
        FRAGS,
        POLICY_BINDINGS,
        POLICY_CIDRS,
        POLICY_RULES,
        CONNTRACK,
        VERDICTS,
        IFACES,
        PATH_RULES,
        PATH_CIDRS,
    ];
    pub const TC_INGRESS: &str = "flowlog_tc_ingress";
    pub const TC_EGRESS: &str = "flowlog_tc_egress";
    pub const XDP_INGRESS: &str = "flowlog_xdp_ingress";
    /// An empty TC program: the baseline of the benchmarks.
    pub const TC_EMPTY: &str = "flowlog_tc_empty";
    /// An empty XDP program: the baseline of the XDP benchmark row.
    pub const XDP_EMPTY: &str = "flowlog_xdp_empty";
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and explicit
    // padding fields, so every bit pattern is valid and there are no implicit holes.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for FlowSlot {}
    unsafe impl aya::Pod for SkipKey {}
    unsafe impl aya::Pod for SkipStats {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragPorts {}
    unsafe impl aya::Pod for PolicyBinding {}
    unsafe impl aya::Pod for BindingKey {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for IfaceConf {}
    unsafe impl aya::Pod for CacheSlot {}
    unsafe impl aya::Pod for PathRule {}
    unsafe impl aya::Pod for PathCidrKey {}

    impl SkipStats {
        pub fn merge(&mut self, other: &SkipStats) {
            self.streams += other.streams;
            self.packets += other.packets;
            self.bytes += other.bytes;
            self.uncounted_stream_packets += other.uncounted_stream_packets;
        }
    }

    impl FlowKey {
        /// Source and destination as `IpAddr`s, by family.
        pub fn addrs(&self) -> (core::net::IpAddr, core::net::IpAddr) {
            fn one(family: u8, a: &[u8; 16]) -> core::net::IpAddr {
                if family == super::family::IPV4 {
                    core::net::IpAddr::V4(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
                } else {
                    core::net::IpAddr::V6(core::net::Ipv6Addr::from(*a))
                }
            }
            (
                one(self.family, &self.src_addr),
                one(self.family, &self.dst_addr),
            )
        }

        /// Whether the ports are real (see [`key_flags::PORTS`]).
        pub fn has_ports(&self) -> bool {
            self.flags & key_flags::PORTS != 0
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn addrs_by_family() {
            let mut k = FlowKey {
                ifindex: 1,
                src_addr: [0; 16],
                dst_addr: [0; 16],
                src_port: 1,
                dst_port: 2,
                protocol: 6,
                family: family::IPV4,
                direction: direction::IN,
                action: action::ACCEPT,
                flags: key_flags::PORTS,
                traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
                _pad: [0; 2],
            };
            k.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
            k.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
            let (s, d) = k.addrs();
            assert_eq!(s.to_string(), "10.0.0.1");
            assert_eq!(d.to_string(), "10.0.0.2");
            k.family = family::IPV6;
            k.src_addr = core::net::Ipv6Addr::LOCALHOST.octets();
            assert_eq!(k.addrs().0.to_string(), "::1");
            assert!(k.has_ports());
        }
    }
}

#[cfg(test)]
mod table_tests {
    use super::{table, FlowKey};

    fn key(i: u32) -> FlowKey {
        let mut k = FlowKey {
            ifindex: 3,
            src_port: (i % 60_000) as u16,
            dst_port: 443,
            protocol: 6,
            family: 4,
            ..FlowKey::default()
        };
        k.src_addr[..4].copy_from_slice(&(0x0a00_0000 + i / 60_000).to_be_bytes());
        k
    }

    #[test]
    fn geometry_leaves_half_the_index_free() {
        assert_eq!(table::index_slots(65_536), 131_072);
        assert_eq!(table::index_slots(16_777_216), 33_554_432);
        assert_eq!(table::index_slots(4), 16);
        assert_eq!(table::overflow(65_536), 4096);
        assert_eq!(table::overflow(1000), 1024);
        assert_eq!(table::overflow(16_777_216), 1_048_576);
    }

    #[test]
    fn home_slots_are_in_range_and_spread() {
        for slots in [16u32, 1500, 98_304, 1_500_000] {
            assert!(table::home(u32::MAX, slots) < slots);
            assert_eq!(table::home(0, slots), 0);
        }
        // 65,536 streams differing only in port and address bits: their home entries
        // in a 131,072-entry index spread like random ones (a uniform hash fills
        // about 1 - e^(-1/2) = 39.3% of the entries with half as many keys).
        let slots = table::index_slots(65_536);
        let mut used = vec![false; slots as usize];
        for i in 0..65_536 {
            used[table::home(table::hash(&key(i)), slots) as usize] = true;
        }
        let frac = used.iter().filter(|u| **u).count() as f64 / f64::from(slots);
        assert!((0.38..0.41).contains(&frac), "home entries used: {frac}");
    }

    #[test]
    fn other_key_sets_spread_too() {
        let slots = table::index_slots(65_536);
        let spread = |keys: &mut dyn Iterator<Item = FlowKey>| {
            let mut used = vec![false; slots as usize];
            for k in keys {
                used[table::home(table::hash(&k), slots) as usize] = true;
            }
            used.iter().filter(|u| **u).count() as f64 / f64::from(slots)
        };
        // 65,536 clients of a /16 (one port each) to one server; the replies.
        let client = |i: u32| {
            let mut k = FlowKey {
                ifindex: 2,
                src_port: 40_000,
                dst_port: 443,
                protocol: 6,
                family: 4,
                ..FlowKey::default()
            };
            k.src_addr[..4].copy_from_slice(&(0x0a01_0000 + i).to_be_bytes());
            k.dst_addr[..4].copy_from_slice(&0xc0a8_0001u32.to_be_bytes());
            k
        };
        let reply = |i: u32| {
            let mut k = client(i);
            core::mem::swap(&mut k.src_addr, &mut k.dst_addr);
            core::mem::swap(&mut k.src_port, &mut k.dst_port);
            k.direction = 1;
            k
        };
        // IPv6 hosts differing in the last address word, 16 ports each.
        let v6 = |i: u32| {
            let mut k = client(0);
            k.family = 6;
            k.src_addr = [0xfd; 16];
            k.src_addr[12..].copy_from_slice(&(i / 16).to_be_bytes());
            k.src_port = 1024 + (i % 16) as u16;
            k
        };
        for (name, frac) in [
            ("clients", spread(&mut (0..65_536).map(client))),
            ("replies", spread(&mut (0..65_536).map(reply))),
            ("ipv6", spread(&mut (0..65_536).map(v6))),
        ] {
            assert!(
                (0.38..0.41).contains(&frac),
                "{name}: home entries used: {frac}"
            );
        }
        assert_ne!(table::hash(&client(5)), table::hash(&reply(5)));
    }

    #[test]
    fn the_ready_state_carries_the_hash() {
        let h = table::hash(&key(7));
        assert_eq!(table::ready(h, 5) >> 32, u64::from(h));
        assert_eq!(table::ready(h, 5) & 0xffff_ffff, table::SLOT_FIRST + 5);
        assert_ne!(table::hash(&key(7)), table::hash(&key(8)));
    }
}
