//! The window's flow table: one shared hash entry per stream (counters added
//! atomically), two generations switched by `CONFIG[GENERATION]`, and the per-interface
//! skip counters of streams that did not fit (the window's SKIPDATA record).
use core::{
    intrinsics::{atomic_or, atomic_xadd, AtomicOrdering},
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use flowlog_common::{counter, CacheSlot, FlowKey, FlowStats, SkipKey, SkipStats, CACHE_SLOTS};

use crate::{
    parse::{TCP_FIN, TCP_RST},
    prog::{bump, Parsed, CONFIG},
    select::select,
};

/// Default capacities; the agent sets the real ones at load time.
pub(crate) const FLOWS_MAX: u32 = 65536;
pub(crate) const SKIPPED_MAX: u32 = 16384;

/// The streams of a window: one shared entry per stream (not one per CPU), counters
/// added atomically. Memory does not grow with the CPU count, and a drain copies one
/// value per stream.
#[map(name = "FLOWS_0")]
pub(crate) static FLOWS_0: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOWS_MAX, 0);
#[map(name = "FLOWS_1")]
pub(crate) static FLOWS_1: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(FLOWS_MAX, 0);
#[map(name = "SKIPPED_0")]
pub(crate) static SKIPPED_0: HashMap<FlowKey, u8> = HashMap::with_max_entries(SKIPPED_MAX, 0);
#[map(name = "SKIPPED_1")]
pub(crate) static SKIPPED_1: HashMap<FlowKey, u8> = HashMap::with_max_entries(SKIPPED_MAX, 0);
/// Skip counters per (interface, generation): shared entries, atomic adds.
#[map(name = "SKIP_STATS")]
pub(crate) static SKIP_STATS: HashMap<SkipKey, SkipStats> = HashMap::with_max_entries(4096, 0);

const EEXIST: i32 = -17;

/// The window counter (`& 1`: the active generation).
#[inline(always)]
pub(crate) fn window_counter() -> u32 {
    match CONFIG.get(flowlog_common::config::GENERATION) {
        Some(g) => *g,
        None => 0,
    }
}

/// Hot streams per CPU, one array per generation: counters added without atomics and
/// without a shared-map lookup (see `CacheSlot`).
#[map(name = "CACHE_0")]
pub(crate) static CACHE_0: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);
#[map(name = "CACHE_1")]
pub(crate) static CACHE_1: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);

/// The key as the 12 words it is made of (`FlowKey` is 48 bytes, 4-aligned).
#[inline(always)]
fn words(k: &FlowKey) -> *const u32 {
    k as *const FlowKey as *const u32
}

/// A multiply-xor hash of the key words that tell streams apart in practice
/// (interface, the first and last word of each address, ports, protocol/family/
/// direction/verdict); the slot is its low bits.
#[inline(always)]
fn hash_of(k: &FlowKey) -> u32 {
    let w = words(k);
    let mut h: u32 = 0x9e37_79b9;
    for i in [0usize, 1, 4, 5, 8, 9, 10] {
        // SAFETY: word `i < 12` of a 48-byte, 4-aligned struct.
        h = (h ^ unsafe { read_volatile(w.add(i)) }).wrapping_mul(0x0100_0193);
    }
    h ^ (h >> 15)
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    let (x, y) = (words(a), words(b));
    let mut diff = 0u32;
    let mut i = 0;
    while i < 12 {
        // SAFETY: as in `slot_of`.
        diff |= unsafe { read_volatile(x.add(i)) ^ read_volatile(y.add(i)) };
        i += 1;
    }
    diff == 0
}

#[derive(PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Counted in the stream's counters (or lost to a map error, or not selected by
    /// any flow log: both counted in `COUNTERS`).
    Stream,
    /// Counted in the skip counters.
    Skipped,
    /// Counted in the skip counters, first time for this interface in this window.
    FirstSkip,
}

/// Coarse monotonic time (a few ns, jiffy resolution): records carry seconds.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub(crate) fn record(p: &Parsed) -> Recorded {
    let counter = window_counter();
    let gen = counter & 1;
    let tag = counter.wrapping_add(1);
    let closed = (p.tcp_flags & (TCP_FIN | TCP_RST) != 0) as u8;
    // The CPU's cache first: a hit adds without atomics or a shared lookup. FIN/RST
    // packets take the shared entry (they stamp its end time).
    let cache = if gen == 0 { &CACHE_0 } else { &CACHE_1 };
    let hash = hash_of(&p.key);
    let slot = if closed == 0 {
        cache.get_ptr_mut(hash & (CACHE_SLOTS - 1))
    } else {
        None
    };
    if let Some(c) = slot {
        // SAFETY: this CPU's slot; programs on one CPU do not preempt each other, and
        // the agent reads this generation's slots only after the switch away from it
        // and an RCU grace period.
        let c = unsafe { &mut *c };
        if c.tag == tag && c.hash == hash && same_key(&c.key, &p.key) {
            c.packets += p.packets;
            c.bytes += p.bytes;
            c.tcp_flags |= p.tcp_flags;
            c.rule_id = p.rule_id;
            return Recorded::Stream;
        }
    }
    let flows = if gen == 0 { &FLOWS_0 } else { &FLOWS_1 };
    if let Some(s) = flows.get_ptr_mut(&p.key) {
        add(s, p, closed);
        claim(slot, p, tag, hash);
        return Recorded::Stream;
    }
    let Some(traffic_path) = select(p) else {
        // SAFETY: per-CPU slot; BPF programs on one CPU do not preempt each other.
        if let Some(c) = crate::prog::COUNTERS.get_ptr_mut(counter::NOT_SELECTED) {
            unsafe { *c += p.packets };
        }
        return Recorded::Stream;
    };
    let now = now_ns();
    let fresh = FlowStats {
        packets: p.packets,
        bytes: p.bytes,
        first_ns: now,
        last_ns: now,
        tcp_flags: p.tcp_flags,
        closed,
        traffic_path,
        _pad: 0,
        rule_id: p.rule_id,
    };
    match flows.insert(&p.key, &fresh, BPF_NOEXIST as u64) {
        Ok(()) => claim(slot, p, tag, hash),
        // Another CPU inserted the stream between our lookup and insert: add to it.
        Err(EEXIST) => match flows.get_ptr_mut(&p.key) {
            Some(s) => add(s, p, closed),
            None => bump(counter::MAP_ERROR),
        },
        Err(_) => return skip(p, gen),
    }
    Recorded::Stream
}

/// Takes an empty cache slot (none of this window) for a stream whose shared entry
/// exists and already holds this packet: its next packets on this CPU are cached. An
/// occupied slot stays with its stream (first come, first served in a window).
#[inline(always)]
fn claim(slot: Option<*mut CacheSlot>, p: &Parsed, tag: u32, hash: u32) {
    if let Some(c) = slot {
        // SAFETY: as in `record`.
        let c = unsafe { &mut *c };
        if c.tag != tag {
            c.key = p.key;
            c.packets = 0;
            c.bytes = 0;
            c.tcp_flags = 0;
            c.rule_id = p.rule_id;
            c.hash = hash;
            c.tag = tag;
        }
    }
}

/// Adds a packet to an existing stream's shared counters. Packets and bytes are
/// atomic adds; the flag word (TCP flags | closed << 8) is atomically OR'd only when
/// the packet brings a new bit, so an established stream's packets write nothing else.
/// The clock is read only for streams that saw FIN/RST (their `end` is the last
/// packet); `first_ns` is set when the stream is inserted.
#[inline(always)]
pub(crate) fn add(s: *mut FlowStats, p: &Parsed, closed: u8) {
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
pub(crate) fn skip(p: &Parsed, gen: u32) -> Recorded {
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
