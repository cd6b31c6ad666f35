//! The window's flow table: one shared entry per stream (counters added atomically),
//! two generations switched by `CONFIG[GENERATION]`, laid out for a cheap drain:
//!
//! - `INDEX`: an open-addressing hash index of 8-byte entries (`hash << 32 | state`,
//!   linear probes, claimed with compare-and-swap), twice as many entries as streams
//!   per generation, small enough to stay in the CPU caches;
//! - `TABLE`: the streams' keys and counters in a `BPF_F_MMAPABLE` array, each
//!   generation's half in the order its streams were placed (`FILL[gen]` hands out
//!   the next slot), which the agent reads sequentially from its memory mapping;
//! - `FLOWS_<gen>`: a small overflow hash map for the streams whose probes found no
//!   entry;
//!
//! in front of them each CPU's cache of hot streams (`CACHE`), and the per-interface
//! skip counters of streams that did not fit (the window's SKIPDATA record).
//!
//! The maps read on every packet hold both generations (the generation picks a range
//! of entries, not a map): the verifier inlines a lookup only when it knows the map.
use core::{
    intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, atomic_xchg, AtomicOrdering},
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    cty::c_void,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, generated::bpf_loop},
    macros::map,
    maps::{Array, HashMap},
};
use flowlog_common::{
    cache_element, cache_entries, config, counter,
    table::{self, PROBES, SLOT_DEAD, SLOT_EMPTY, SLOT_WRITING},
    CacheSlot, CpuCache, FlowKey, FlowSlot, FlowStats, SkipKey, SkipStats, CACHE_SLOTS,
};

use crate::{
    parse::{TCP_FIN, TCP_RST},
    prog::{bump, Parsed, CONFIG, SCRATCH},
    select::select,
};

/// Default capacities; the agent sets the real ones at load time.
pub(crate) const FLOWS_MAX: u32 = 65536;
pub(crate) const SKIPPED_MAX: u32 = 16384;

/// The hash index, both generations: entries `[gen * n, gen * n + n)` are generation
/// `gen`'s, `n = CONFIG[TABLE_SLOTS]` (see the module header). One map for both (not
/// one per generation): a lookup whose map is known when the program is verified is
/// inlined by the verifier, one that picks between two maps is an indirect call
/// (about 10 ns more per lookup, measured).
#[map(name = "INDEX")]
pub(crate) static INDEX: Array<u64> =
    Array::with_max_entries(2 * table::index_slots(FLOWS_MAX), BPF_F_MMAPABLE);
/// The streams of a window: one shared slot per stream (not one per CPU), counters
/// added atomically; slots `[gen * F, gen * F + F)` are generation `gen`'s,
/// `F = CONFIG[MAX_FLOWS]`. Memory does not grow with the CPU count, and the agent
/// reads a drained generation straight from its memory mapping.
#[map(name = "TABLE")]
pub(crate) static TABLE: Array<FlowSlot> = Array::with_max_entries(2 * FLOWS_MAX, BPF_F_MMAPABLE);
/// Per generation: slots of its half of `TABLE` handed out (table and overflow streams
/// alike: an overflow stream leaves its slot unused), against `CONFIG[MAX_FLOWS]`;
/// the agent zeroes a generation's count when it clears it.
#[map(name = "FILL")]
pub(crate) static FILL: Array<u64> = Array::with_max_entries(2, 0);
/// The overflow of each generation's table (same counters, a hash map).
#[map(name = "FLOWS_0")]
pub(crate) static FLOWS_0: HashMap<FlowKey, FlowStats> =
    HashMap::with_max_entries(table::overflow(FLOWS_MAX), 0);
#[map(name = "FLOWS_1")]
pub(crate) static FLOWS_1: HashMap<FlowKey, FlowStats> =
    HashMap::with_max_entries(table::overflow(FLOWS_MAX), 0);
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

/// Hot streams per CPU: element `cpu * 2 + gen` holds CPU `cpu`'s slots of generation
/// `gen` (see `CpuCache`); counters added without atomics and without a shared-map
/// lookup (see `CacheSlot`). The agent sizes it for the possible CPUs (one CPU here).
#[map(name = "CACHE")]
pub(crate) static CACHE: Array<CpuCache> = Array::with_max_entries(cache_entries(1), 0);

/// This CPU's cache slot `i` (masked to the cache) of generation `gen`; `None` on a
/// CPU the agent did not size the cache for (its packets then take the shared table,
/// counted all the same).
#[inline(always)]
pub(crate) fn cache_slot(gen: u32, i: u32) -> Option<*mut CacheSlot> {
    // SAFETY: helper without arguments; a program does not migrate while it runs.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let mine = CACHE.get_ptr_mut(cache_element(cpu, gen))?;
    // SAFETY: a live array element; the slot index is masked to its `CACHE_SLOTS`.
    Some(unsafe { addr_of_mut!((*mine)[(i & (CACHE_SLOTS - 1)) as usize]) })
}

/// The stream's slot in this CPU's cache of a generation: one multiply over the
/// xor of the key words the table hash reads (a collision only costs a cache miss;
/// the table's hash is computed only after one).
#[inline(always)]
fn cache_index(k: &FlowKey) -> u32 {
    let w = k as *const FlowKey as *const u32;
    // SAFETY: words `< 12` of a 48-byte, 4-aligned struct.
    let word = |i: usize| unsafe { read_volatile(w.add(i)) };
    cache_index_of(
        word(0),
        word(1),
        word(4),
        word(5),
        word(8),
        word(9),
        word(10),
    )
}

/// [`cache_index`] from the key's 4-byte words 0, 1, 4, 5, 8, 9 and 10 (ifindex, the
/// first and last words of each address, the ports, protocol/family/direction/action):
/// the fast path (`crate::fast`) has them without building the key.
#[inline(always)]
pub(crate) fn cache_index_of(
    w0: u32,
    w1: u32,
    w4: u32,
    w5: u32,
    w8: u32,
    w9: u32,
    w10: u32,
) -> u32 {
    let x = w0.rotate_left(8)
        ^ w1
        ^ w4
        ^ w5.rotate_left(16)
        ^ w8.rotate_left(16)
        ^ w9
        ^ w10.rotate_left(24);
    x.wrapping_mul(0x9e37_79b1) >> (32 - CACHE_SLOTS.trailing_zeros())
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    // Six 8-byte words: every key compared here sits 8-aligned (in a cache slot, a
    // table slot, or the scratch copy), and fewer loads keep the compare in registers
    // (the probe step runs in its own small stack frame).
    let (x, y) = (
        a as *const FlowKey as *const u64,
        b as *const FlowKey as *const u64,
    );
    // SAFETY: words `< 6` of 48-byte structs; see above for the alignment.
    let w = |i: usize| unsafe { read_volatile(x.add(i)) ^ read_volatile(y.add(i)) };
    (w(0) | w(1) | w(2) | w(3) | w(4) | w(5)) == 0
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
fn config_value(slot: u32) -> u32 {
    match CONFIG.get(slot) {
        Some(v) => *v,
        None => 0,
    }
}

/// Where a stream is in the table, or where it would go.
enum Probe {
    /// Its slot.
    Found(*mut FlowSlot),
    /// Not in the table; the first empty index entry of its probe sequence.
    Empty(u32),
    /// Not found within [`PROBES`] entries, or another CPU kept writing an entry with
    /// its hash: the overflow map.
    Overflow,
}

/// Entry `i` of the index of the generation whose entries start at `base`.
#[inline(always)]
fn index_entry(base: u32, i: u32) -> Option<*mut u64> {
    INDEX.get_ptr_mut(base + i)
}

/// Where generation `gen` (0 or 1)'s entries start in `INDEX` (`n` entries per
/// generation). Without a branch: one verifier state for both generations.
#[inline(always)]
fn index_base(gen: u32, n: u32) -> u32 {
    n & gen.wrapping_neg()
}

/// Reads an index entry before the slot it points to. On x86 (total store order) a
/// plain load is enough: the writer's stores of key and counters precede its
/// publishing exchange, and loads are not reordered. Elsewhere a compare-and-swap of
/// the entry with itself reads it with a full barrier (the `generic` BPF CPU has no
/// load-acquire), so a published entry's key is never read stale.
#[inline(always)]
fn read_entry(e: *mut u64) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    // SAFETY: a live array element, written only with atomic operations.
    let v = unsafe { read_volatile(e) };
    #[cfg(not(bpf_target_arch = "x86_64"))]
    // SAFETY: as above; swapping 0 for 0 leaves any entry as it is.
    let v = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(e, 0, 0).0
    };
    v
}

/// The slot (of `TABLE`, both generations) an index entry of `hash` points to, if it
/// is published and holds `key`.
#[inline(always)]
fn entry_slot(e: u64, hash: u32, key: &FlowKey) -> Option<(u32, *mut FlowSlot)> {
    if (e >> 32) as u32 != hash || e & 0xffff_ffff < table::SLOT_FIRST {
        return None;
    }
    let slot = (e & 0xffff_ffff) as u32 - table::SLOT_FIRST as u32;
    let s = TABLE.get_ptr_mut(slot)?;
    // SAFETY: a live array element; its key was written before the entry was
    // published and is not written again in this window.
    if same_key(unsafe { &(*s).key }, key) {
        Some((slot, s))
    } else {
        None
    }
}

/// The stream's home index entry, checked inline (where nearly every stream is
/// found), before the frame's facts go to the scratch slot.
enum Home {
    Found(*mut FlowSlot),
    Empty(u32),
    /// Walk the probe sequence from this entry.
    Walk(u32),
    Overflow,
}

/// Linear probing, step one: the home entry. Entries are never freed within a window,
/// so the first empty entry ends the search.
#[inline(always)]
fn home_probe(base: u32, key: &FlowKey, hash: u32, n: u32) -> Home {
    let home = table::home(hash, n);
    let Some(e) = index_entry(base, home) else {
        return Home::Overflow;
    };
    let e = read_entry(e);
    if let Some((_, s)) = entry_slot(e, hash, key) {
        return Home::Found(s);
    }
    if e == SLOT_EMPTY {
        return Home::Empty(home);
    }
    // Walk on from the next entry, or wait at this one while another CPU writes a
    // stream of the same hash (most likely this very stream).
    Home::Walk(if e == (hash as u64) << 32 | SLOT_WRITING {
        home
    } else if home + 1 >= n {
        0
    } else {
        home + 1
    })
}

/// Linear probing, the rest: under `bpf_loop`, so the verifier checks one probe step
/// once rather than every unrolled step on every path.
#[inline(always)]
fn probe(base: u32, hash: u32, n: u32, home: Home) -> Probe {
    match home {
        Home::Found(s) => Probe::Found(s),
        Home::Empty(i) => Probe::Empty(i),
        Home::Walk(from) => walk(base, hash, from, n),
        Home::Overflow => Probe::Overflow,
    }
}

/// The probe sequence from entry `from` (see `probe_step`).
#[inline(always)]
fn walk(base: u32, hash: u32, from: u32, n: u32) -> Probe {
    let Some(q) = SCRATCH.get_ptr_mut(0) else {
        return Probe::Overflow;
    };
    // SAFETY: this CPU's scratch slot; programs on one CPU do not preempt each other.
    unsafe {
        let w = addr_of_mut!((*q).walk);
        write_volatile(
            w,
            ProbeWalk {
                hash,
                i: from,
                n,
                base,
                kind: WALK_OVERFLOW,
                steps: 0,
                waits: 0,
                slot: 0,
            },
        );
        // The walk's state stays in the scratch slot (no callback context on the
        // stack): the verifier's view of this frame does not change across steps.
        bpf_loop(
            PROBES + WAITS,
            probe_step as *const () as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
        match read_volatile(addr_of!((*w).kind)) {
            WALK_FOUND => TABLE
                .get_ptr_mut(read_volatile(addr_of!((*w).slot)))
                .map_or(Probe::Overflow, Probe::Found),
            WALK_EMPTY => Probe::Empty(read_volatile(addr_of!((*w).i))),
            _ => Probe::Overflow,
        }
    }
}

/// Re-reads of an entry being written before the walk gives up on it (the writer's
/// window is a few stores).
const WAITS: u32 = 32;

const WALK_OVERFLOW: u32 = 0;
const WALK_FOUND: u32 = 1;
const WALK_EMPTY: u32 = 2;

/// The walk's state, in this CPU's `SCRATCH` slot beside the key it looks for.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct ProbeWalk {
    hash: u32,
    /// The entry to probe next; where the walk stopped once `kind` is set.
    i: u32,
    /// Entries in the index of one generation.
    n: u32,
    /// Where the generation's entries start in `INDEX`.
    base: u32,
    kind: u32,
    /// Entries probed, and re-reads of entries being written.
    steps: u32,
    waits: u32,
    /// The stream's slot (of `TABLE`) once found.
    slot: u32,
}

/// One probe step: returns 1 (stop) at the stream's entry, at an empty entry, after
/// [`PROBES`] entries, or after [`WAITS`] re-reads of entries that other CPUs were
/// writing with the same hash (then the stream counts in the overflow map).
extern "C" fn probe_step(_n: u32, _ctx: *mut c_void) -> i64 {
    let Some(q) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch slot, written by `record` and `walk`.
    let w = unsafe { &mut (*q).walk };
    let Some(e) = index_entry(w.base, w.i) else {
        return 1;
    };
    let e = read_entry(e);
    // SAFETY: `q` is this CPU's scratch copy of the frame (see `record`).
    if let Some((slot, _)) = entry_slot(e, w.hash, unsafe { &(*q).p.key }) {
        w.kind = WALK_FOUND;
        w.slot = slot;
        return 1;
    }
    if e == SLOT_EMPTY {
        w.kind = WALK_EMPTY;
        return 1;
    }
    if e == (w.hash as u64) << 32 | SLOT_WRITING {
        // Read the entry again: its writer is between claim and publish.
        w.waits += 1;
        return (w.waits >= WAITS) as i64;
    }
    w.steps += 1;
    if w.steps >= PROBES {
        return 1;
    }
    w.i += 1;
    if w.i >= w.n {
        w.i = 0;
    }
    0
}

#[inline(always)]
pub(crate) fn record(p: &Parsed) -> Recorded {
    let counter = window_counter();
    let gen = counter & 1;
    let tag = counter.wrapping_add(1);
    let closed = (p.tcp_flags & (TCP_FIN | TCP_RST) != 0) as u8;
    // The CPU's cache first: a hit adds without atomics or a shared lookup. FIN/RST
    // packets take the shared entry (they stamp its end time).
    let slot = if closed == 0 {
        cache_slot(gen, cache_index(&p.key))
    } else {
        None
    };
    if let Some(c) = slot {
        // SAFETY: this CPU's slot; programs on one CPU do not preempt each other, and
        // the agent reads this generation's slots only after the switch away from it
        // and an RCU grace period.
        let c = unsafe { &mut *c };
        if c.tag == tag && same_key(&c.key, &p.key) {
            c.packets += p.packets;
            c.bytes += p.bytes;
            c.tcp_flags |= p.tcp_flags;
            c.rule_id = p.rule_id;
            return Recorded::Stream;
        }
    }
    let hash = table::hash(&p.key);
    // The shared table: its home entry first, then (from this CPU's scratch copy of
    // the frame's facts) the rest of the probe sequence or a new stream.
    let n = config_value(config::TABLE_SLOTS);
    let base = index_base(gen, n);
    let home = home_probe(base, &p.key, hash, n);
    if let Home::Found(s) = home {
        // SAFETY: a published slot: its stats are live counters.
        add(unsafe { addr_of_mut!((*s).stats) }, p, closed);
        claim(slot, p, tag, hash);
        return Recorded::Stream;
    }
    let Some(p) = crate::prog::to_scratch(p) else {
        bump(counter::MAP_ERROR);
        return Recorded::Stream;
    };
    shared(p, gen, tag, hash, closed, slot, n, home)
}

/// A packet of a stream the CPU cache did not hold: its table slot (or overflow
/// entry), or a new stream's.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn shared(
    p: &Parsed,
    gen: u32,
    tag: u32,
    hash: u32,
    closed: u8,
    slot: Option<*mut CacheSlot>,
    n: u32,
    home: Home,
) -> Recorded {
    let empty = match probe(index_base(gen, n), hash, n, home) {
        Probe::Found(s) => {
            // SAFETY: a published slot: its stats are live counters.
            add(unsafe { addr_of_mut!((*s).stats) }, p, closed);
            claim(slot, p, tag, hash);
            return Recorded::Stream;
        }
        Probe::Empty(i) => Some(i),
        Probe::Overflow => None,
    };
    let flows = if gen == 0 { &FLOWS_0 } else { &FLOWS_1 };
    let empty = match empty {
        Some(i) => i,
        None => {
            if let Some(s) = flows.get_ptr_mut(&p.key) {
                add(s, p, closed);
                claim(slot, p, tag, hash);
                return Recorded::Stream;
            }
            NO_SLOT
        }
    };
    new_stream(p, gen, tag, hash, closed, slot, empty)
}

const NO_SLOT: u32 = u32::MAX;

/// A stream neither the table nor the overflow map holds: selection, the window's
/// limit, then the empty slot `empty` of its probe sequence (or the overflow map).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn new_stream(
    p: &Parsed,
    gen: u32,
    tag: u32,
    hash: u32,
    closed: u8,
    slot: Option<*mut CacheSlot>,
    empty: u32,
) -> Recorded {
    let flows = if gen == 0 { &FLOWS_0 } else { &FLOWS_1 };
    // Read again rather than passed down from `record`: a fresh map read is one
    // unknown for every path here, where a passed value kept per-path facts (passing
    // it cost the verifier 10,000 more instructions for TC, 54,000 for XDP).
    let n = config_value(config::TABLE_SLOTS);
    let base = index_base(gen, n);
    let entry = if empty == NO_SLOT {
        None
    } else {
        index_entry(base, empty)
    };
    // A new stream.
    let Some(traffic_path) = select(p) else {
        // SAFETY: per-CPU slot; BPF programs on one CPU do not preempt each other.
        if let Some(c) = crate::prog::COUNTERS.get_ptr_mut(counter::NOT_SELECTED) {
            unsafe { *c += p.packets };
        }
        return Recorded::Stream;
    };
    let Some(fill) = FILL.get_ptr_mut(gen) else {
        bump(counter::MAP_ERROR);
        return Recorded::Stream;
    };
    let max = config_value(config::MAX_FLOWS) as u64;
    // SAFETY: a live array element, written only atomically.
    if unsafe { read_volatile(fill) } >= max {
        return skip(p, gen);
    }
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
    if let Some(e) = entry {
        // SAFETY: `e` is a live index entry, only changed with atomic operations; the
        // slot it will point to is written by the one program whose compare-and-swap
        // claimed the entry, before it publishes the entry.
        unsafe {
            let (_, won) = atomic_cxchg::<
                u64,
                { AtomicOrdering::SeqCst },
                { AtomicOrdering::SeqCst },
            >(e, SLOT_EMPTY, (hash as u64) << 32 | SLOT_WRITING);
            if won {
                let Some(i) = take_place(gen, max) else {
                    // Another CPU placed the window's last stream meanwhile.
                    atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(e, SLOT_DEAD);
                    return skip(p, gen);
                };
                // Generation 1's slots follow generation 0's `max` (no branch, as in
                // `index_base`).
                let i = i + (max as u32 & gen.wrapping_neg());
                let Some(s) = TABLE.get_ptr_mut(i) else {
                    atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(e, SLOT_DEAD);
                    bump(counter::MAP_ERROR);
                    return Recorded::Stream;
                };
                write_volatile(addr_of_mut!((*s).key), p.key);
                write_volatile(addr_of_mut!((*s).stats), fresh);
                // Publish: a full barrier orders the key and stats before the entry.
                atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(
                    e,
                    (hash as u64) << 32 | (u64::from(i) + table::SLOT_FIRST),
                );
                claim(slot, p, tag, hash);
                return Recorded::Stream;
            }
            // Another CPU claimed the entry first, most likely for this very stream:
            // wait for it to be published (and walk on if it is another stream's).
            if let Probe::Found(f) = walk(base, hash, empty, n) {
                add(addr_of_mut!((*f).stats), p, closed);
                claim(slot, p, tag, hash);
                return Recorded::Stream;
            }
        }
        // Its entry is being written: count in the overflow map (the agent merges a
        // stream found in both).
        if let Some(o) = flows.get_ptr_mut(&p.key) {
            add(o, p, closed);
            return Recorded::Stream;
        }
    }
    if take_place(gen, max).is_none() {
        return skip(p, gen);
    }
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

/// Hands out the next slot of generation `gen`'s table if fewer than `max` are
/// taken: a compare-and-swap loop (BPF's fetching add needs CPU v3; the object is
/// built for `generic`, whose `cmpxchg` is available), run under `bpf_loop` so the
/// verifier checks one step. A CPU that loses 8 races in a row (never seen) counts
/// the stream as skipped, which the SKIPDATA record reports.
#[inline(always)]
fn take_place(gen: u32, max: u64) -> Option<u32> {
    let mut t = Take {
        gen,
        won: 0,
        max,
        slot: 0,
    };
    // SAFETY: `take_step` has the callback signature bpf_loop expects and `t`
    // outlives the call.
    unsafe {
        bpf_loop(
            8,
            take_step as *const () as *mut c_void,
            &mut t as *mut Take as *mut c_void,
            0,
        )
    };
    if t.won != 0 {
        Some(t.slot as u32)
    } else {
        None
    }
}

#[repr(C)]
struct Take {
    gen: u32,
    won: u32,
    max: u64,
    slot: u64,
}

extern "C" fn take_step(_n: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given in `take_place`.
    let t = unsafe { &mut *(ctx as *mut Take) };
    let Some(fill) = FILL.get_ptr_mut(t.gen) else {
        return 1;
    };
    // SAFETY: a live array element, written only with atomic operations.
    let cur = unsafe { read_volatile(fill) };
    if cur >= t.max {
        return 1;
    }
    // SAFETY: as above.
    let (_, won) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            fill,
            cur,
            cur + 1,
        )
    };
    if won {
        t.won = 1;
        t.slot = cur;
        return 1;
    }
    0
}

/// Takes an empty cache slot (none of this window) for a stream whose shared entry
/// (table slot or overflow entry) exists and already holds this packet: its next packets on this CPU are cached. An
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
    // SAFETY: `s` points into a live table slot (an array element) or overflow-map
    // element (RCU keeps it valid for this program run), 8-aligned in both; every
    // concurrent writer uses the atomic operations below, and
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

/// The window is full: count the packet per interface so the window's SKIPDATA
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
