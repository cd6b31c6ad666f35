//! Draining the kernel's flow maps at a window boundary, without losing or double
//! counting a single increment while traffic flows.
//!
//! ```text
//!   programs ──write──▶ INDEX/TABLE[active half] agent
//!                       FLOWS_<active>          1. CONFIG[GENERATION] += 1 (parity = active)
//!                       CACHE[active half]      2. RcuBarrier::synchronize()  (grace period)
//!                                               3. read FLOWS_<old> (the table's overflow,
//!                                                  BPF_MAP_LOOKUP_BATCH) and CACHE[old half],
//!                                                  then read FILL[old] slots of
//!                                                  TABLE[old half] in its memory mapping
//!                                                  (in order, no system call per stream),
//!                                                  render, write; read + delete
//!                                                  SKIPPED_<old>, SKIP_STATS{gen = old}
//!                                               4. after the records are out: zero
//!                                                  INDEX[old half], the used slots of
//!                                                  TABLE[old half] and FILL[old], clear
//!                                                  FLOWS_<old> (LOOKUP_AND_DELETE_BATCH)
//! ```
//!
//! `INDEX`, `TABLE` and `CACHE` hold both generations (generation 1's entries follow
//! generation 0's): the programs then look them up in one map the verifier knows,
//! which it inlines.
//!
//! Why this is exact: a program reads the generation once, at its start, and the
//! whole run is one RCU read-side critical section. A program that started before
//! step 1 may still write the old maps, but it finishes before step 2 returns; every
//! program that starts after step 1 sees the new generation. So once step 2 returns,
//! nothing writes the old maps and step 3 reads final values; an increment lands in
//! exactly one generation and is drained exactly once. (A packet that raced the
//! switch is reported in the window that ends at this boundary.)
//!
//! A stream normally has one place: its table slot, or an overflow entry when its
//! probes found no index entry. Two CPUs racing to place the same new stream can
//! leave it in both (one waited in vain for the other's index entry to be published
//! and used the overflow map); the agent repeats the stream's probe sequence in the
//! mapped index and merges the overflow entry into the slot, so every stream is
//! reported once.
//!
//! Step 4 is off the boundary's critical path, and the old generation is idle for a
//! whole window. A generation that is still uncleared when it is about to become
//! active again (the agent skipped step 4) is cleared first, so programs never add to
//! stale entries.
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray},
    Ebpf,
};
use std::collections::HashMap as HashMap_;

use flowlog_common::{
    config, counter, names,
    table::{self, PROBES},
    CacheSlot, CpuCache, FlowKey, FlowSlot, FlowStats, SkipKey, SkipStats,
};

use crate::{
    batch::{read_pod, BatchDrain},
    rcu::{RcuBarrier, RcuError},
};

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout: {source}")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("switching the active map generation: {0}")]
    Switch(#[source] MapError),
    #[error("reading map {name}: {source}")]
    Read {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("clearing map {name}: {source}")]
    Clear {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("draining map {name}: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {name} into memory ({slots} slots): {source}")]
    Mmap {
        name: &'static str,
        slots: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Rcu(#[from] RcuError),
}

/// A window of a `BPF_F_MMAPABLE` array mapped read-write into the agent.
struct Mapped<T> {
    /// The mapping (the whole array).
    map: *mut libc::c_void,
    bytes: usize,
    /// The window's first element and its length.
    ptr: *mut T,
    len: u32,
}

// SAFETY: plain shared memory owned by this value; access goes through `&self`/`&mut
// self` and the drain protocol (see the module header).
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    /// Maps elements `[start, start + len)` of the array of `total` elements behind
    /// `fd` (the mapping keeps the map alive). Only the pages holding them are mapped:
    /// the kernel maps an array's pages when the mapping is made, so they all count in
    /// the agent's RSS.
    fn new(
        fd: RawFd,
        total: u32,
        start: u32,
        len: u32,
        name: &'static str,
    ) -> Result<Self, DrainError> {
        assert!(u64::from(start) + u64::from(len) <= u64::from(total));
        const PAGE: usize = 4096;
        let first = start as usize * size_of::<T>();
        let end = (start as usize + len as usize) * size_of::<T>();
        let offset = first - first % PAGE;
        let bytes = (end - offset).next_multiple_of(PAGE).max(PAGE);
        // SAFETY: a shared mapping of the map's pages (the kernel checks offset and
        // length against the map and its BPF_F_MMAPABLE flag); unmapped in `drop`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DrainError::Mmap {
                name,
                slots: total,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            map: ptr,
            bytes,
            // SAFETY: `first - offset < PAGE` bytes into the mapping, which holds the
            // `len` elements from there.
            ptr: unsafe { ptr.cast::<u8>().add(first - offset).cast::<T>() },
            len,
        })
    }

    /// Element `i`, read with a volatile load (the kernel shares the memory).
    #[inline]
    fn get(&self, i: u32) -> T {
        assert!(i < self.len);
        // SAFETY: `i < len`, inside the mapping; `T` is plain data.
        unsafe { std::ptr::read_volatile(self.ptr.add(i as usize)) }
    }

    #[inline]
    fn set(&mut self, i: u32, v: T) {
        assert!(i < self.len);
        // SAFETY: as in `get`.
        unsafe { std::ptr::write_volatile(self.ptr.add(i as usize), v) }
    }

    /// Zeroes the first `n` elements.
    fn clear(&mut self, n: u32) {
        let n = n.min(self.len) as usize;
        // SAFETY: inside the mapping, writable; all-zero is a valid `T` here.
        unsafe { std::ptr::write_bytes(self.ptr, 0, n) };
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.map, self.bytes) };
    }
}

/// One generation's flow table, mapped into the agent: its half of the hash index
/// (`INDEX`) and of the streams' slots (`TABLE`, in the order they were placed). A
/// drained generation is read and zeroed in memory.
pub struct MappedTable {
    index: Mapped<u64>,
    slots: Mapped<FlowSlot>,
    /// `TABLE` number of this generation's first slot (index entries count slots of
    /// both generations together).
    base: u32,
    /// Dups of the maps' fds: the maps stay open (and show in `/proc/PID/fdinfo`).
    _fds: [std::os::fd::OwnedFd; 2],
}

fn array_fd<V: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
) -> Result<(std::os::fd::OwnedFd, u32), DrainError> {
    let map = ebpf.map(name).ok_or(DrainError::MissingMap { name })?;
    let arr: Array<&MapData, V> =
        Array::try_from(map).map_err(|source| DrainError::MapType { name, source })?;
    let fd = arr
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DrainError::Mmap {
            name,
            slots: arr.len(),
            source,
        })?;
    Ok((fd, arr.len()))
}

impl MappedTable {
    /// Maps generation `g`'s half of the index and slots of a loaded object.
    pub fn of(ebpf: &Ebpf, g: u32) -> Result<Self, DrainError> {
        let (iname, sname) = (names::INDEX, names::TABLE);
        let (ifd, ilen) = array_fd::<u64>(ebpf, iname)?;
        let (sfd, slen) = array_fd::<FlowSlot>(ebpf, sname)?;
        let (n, f) = (ilen / 2, slen / 2);
        Ok(Self {
            index: Mapped::new(ifd.as_raw_fd(), ilen, g * n, n, iname)?,
            slots: Mapped::new(sfd.as_raw_fd(), slen, g * f, f, sname)?,
            base: g * f,
            _fds: [ifd, sfd],
        })
    }

    /// Slots of the table (`--max-flows`).
    pub fn slots(&self) -> u32 {
        self.slots.len
    }

    /// The streams in the table (tests and benchmarks; the agent drains with
    /// [`FlowMaps::switch`]).
    pub fn streams(&self) -> Vec<(FlowKey, FlowStats)> {
        (0..self.slots.len)
            .map(|i| self.slots.get(i))
            .filter(|s| s.stats.packets > 0)
            .map(|s| (s.key, s.stats))
            .collect()
    }

    /// The slot holding `key` (published), by the programs' probe sequence.
    fn find(&self, key: &FlowKey) -> Option<u32> {
        let hash = table::hash(key);
        for i in self.probe_sequence(hash) {
            let e = self.index.get(i);
            if e == table::SLOT_EMPTY {
                return None;
            }
            let low = e & 0xffff_ffff;
            if (e >> 32) as u32 == hash && low >= table::SLOT_FIRST + u64::from(self.base) {
                let slot = (low - table::SLOT_FIRST) as u32 - self.base;
                if slot < self.slots.len && self.slots.get(slot).key == *key {
                    return Some(slot);
                }
            }
        }
        None
    }

    /// The index entries the programs probe for `hash`, in order: [`PROBES`] entries
    /// from its home entry, wrapping around.
    fn probe_sequence(&self, hash: u32) -> impl Iterator<Item = u32> {
        let n = self.index.len;
        let home = table::home(hash, n);
        (0..PROBES).map(move |k| ((u64::from(home) + u64::from(k)) % u64::from(n)) as u32)
    }

    /// Places a stream in slot `slot` as a program would (benchmarks and tests fill
    /// tables from user space with it). Returns false when its probes find no entry.
    pub fn insert(&mut self, slot: u32, key: &FlowKey, stats: &FlowStats) -> bool {
        let hash = table::hash(key);
        for i in self.probe_sequence(hash) {
            if self.index.get(i) == table::SLOT_EMPTY {
                self.slots.set(
                    slot,
                    FlowSlot {
                        key: *key,
                        stats: *stats,
                    },
                );
                self.index.set(i, table::ready(hash, self.base + slot));
                return true;
            }
        }
        false
    }

    /// Zeroes the index and the first `fill` slots (the generation must be idle: no
    /// program writes it).
    pub fn clear(&mut self, fill: u64) {
        self.index.clear(self.index.len);
        self.slots.clear(fill.min(u64::from(u32::MAX)) as u32);
    }
}

/// Writes the table geometry into `CONFIG` of an object loaded with
/// [`crate::loader::sized`] (harnesses that run the programs without a [`FlowMaps`],
/// which writes it itself).
pub fn init_config(ebpf: &mut Ebpf, max_flows: u32) -> Result<(), DrainError> {
    let name = names::CONFIG;
    let map = ebpf.map_mut(name).ok_or(DrainError::MissingMap { name })?;
    let mut config: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| DrainError::MapType { name, source })?;
    for (slot, v) in [
        (config::TABLE_SLOTS, table::index_slots(max_flows)),
        (config::MAX_FLOWS, max_flows),
    ] {
        config.set(slot, v, 0).map_err(DrainError::Switch)?;
    }
    Ok(())
}

/// Adds `from` to `into` (one stream counted in two places).
fn merge(into: &mut FlowStats, from: &FlowStats) {
    into.packets += from.packets;
    into.bytes += from.bytes;
    into.first_ns = into.first_ns.min(from.first_ns);
    into.last_ns = into.last_ns.max(from.last_ns);
    into.tcp_flags |= from.tcp_flags;
    into.closed |= from.closed;
}

/// Streams drained per system call.
pub const BATCH: usize = 8192;

/// Userspace handles on the data-path maps.
pub struct FlowMaps {
    /// The flow tables of the two generations, memory-mapped.
    tables: [MappedTable; 2],
    /// Streams placed per generation.
    fill: Array<MapData, u64>,
    /// The tables' overflow maps.
    flows: [HashMap<MapData, FlowKey, FlowStats>; 2],
    skipped: [HashMap<MapData, FlowKey, u8>; 2],
    skip_stats: HashMap<MapData, SkipKey, SkipStats>,
    config: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    barrier: RcuBarrier,
    active: u32,
    /// `CONFIG[GENERATION]`: the window counter (`& 1` = `active`).
    counter: u32,
    /// The CPUs' stream caches of the two generations (element `cpu * 2 + g`).
    cache: Array<MapData, CpuCache>,
    /// Generations read but not yet cleared (step 4).
    dirty: [bool; 2],
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DrainError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DrainError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DrainError::MapType { name, source })
}

fn raw_fd<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> RawFd {
    map.map().fd().as_fd().as_raw_fd()
}

impl FlowMaps {
    /// Takes the maps out of a loaded object and makes generation 0 active, with a
    /// window limit of `max_flows` streams (the value the object was loaded for).
    pub fn take(ebpf: &mut Ebpf, max_flows: u32) -> Result<Self, DrainError> {
        Self::take_with(ebpf, None, crate::pin::shape(max_flows, false))
    }

    /// As [`FlowMaps::take`]; with `adopted` (pinned maps of a previous agent) the
    /// active generation stays and the idle one is marked for clearing; fresh maps get
    /// their `shape` and layout version written.
    pub fn take_with(
        ebpf: &mut Ebpf,
        adopted: Option<crate::pin::Adopted>,
        shape: u32,
    ) -> Result<Self, DrainError> {
        let tables = [MappedTable::of(ebpf, 0)?, MappedTable::of(ebpf, 1)?];
        let slots = tables[0].index.len;
        let mut maps = Self {
            tables,
            fill: take(ebpf, names::FILL)?,
            flows: [take(ebpf, names::FLOWS[0])?, take(ebpf, names::FLOWS[1])?],
            skipped: [
                take(ebpf, names::SKIPPED_STREAMS[0])?,
                take(ebpf, names::SKIPPED_STREAMS[1])?,
            ],
            skip_stats: take(ebpf, names::SKIP_STATS)?,
            config: take(ebpf, names::CONFIG)?,
            counters: take(ebpf, names::COUNTERS)?,
            barrier: RcuBarrier::new()?,
            active: 0,
            counter: 0,
            cache: take(ebpf, names::CACHE)?,
            dirty: [false; 2],
        };
        match adopted {
            Some(a) => {
                maps.counter = a.generation;
                maps.active = a.generation & 1;
                maps.dirty[(maps.active ^ 1) as usize] = true;
            }
            None => {
                for (slot, v) in [
                    (config::GENERATION, 0),
                    (config::SHAPE, shape),
                    (config::LAYOUT, flowlog_common::LAYOUT_VERSION),
                    (config::EMITTED, 0),
                    (config::LAST_SWITCH_S, 0),
                    (config::PREV_SWITCH_S, 0),
                    (config::TABLE_SLOTS, slots),
                    (config::MAX_FLOWS, shape & crate::pin::SHAPE_FLOWS),
                ] {
                    maps.config.set(slot, v, 0).map_err(DrainError::Switch)?;
                }
            }
        }
        Ok(maps)
    }

    /// `CONFIG[GENERATION]`: the counter of the window being captured (the idle
    /// generation's window had this minus one).
    pub fn window_counter(&self) -> u32 {
        self.counter
    }

    /// Whether the idle generation holds streams whose records never went out (a
    /// previous agent stopped between a switch and the end of its emission).
    pub fn idle_unemitted(&self) -> bool {
        let idle = self.active ^ 1;
        let emitted = self.config.get(&config::EMITTED, 0).unwrap_or(0);
        emitted != idle + 1 && self.fill.get(&idle, 0).unwrap_or(0) > 0
    }

    /// Generation `g`'s table (benchmarks and tests place streams in it).
    pub fn table_mut(&mut self, g: u32) -> &mut MappedTable {
        &mut self.tables[g as usize]
    }

    /// Generation `g`'s overflow map.
    pub fn overflow_mut(&mut self, g: u32) -> &mut HashMap<MapData, FlowKey, FlowStats> {
        &mut self.flows[g as usize]
    }

    /// Sets generation `g`'s count of placed streams (after filling from user space).
    pub fn set_fill(&mut self, g: u32, streams: u64) -> Result<(), DrainError> {
        self.fill.set(g, streams, 0).map_err(DrainError::Switch)
    }

    /// Drains the idle generation without switching (see [`FlowMaps::idle_unemitted`]).
    pub fn drain_idle(&mut self) -> Result<GenerationDrain<'_>, DrainError> {
        let g = self.active ^ 1;
        // The idle generation's window had counter - 1, its slots tag `counter`.
        self.generation(g, self.counter)
    }

    /// A cursor over generation `g` (idle: nothing writes it), with its cache slots
    /// tagged `tag`: reads the overflow map and finds which of its streams also have
    /// a table slot.
    fn generation(&mut self, g: u32, tag: u32) -> Result<GenerationDrain<'_>, DrainError> {
        let cached = self.cached(g, tag)?;
        let gi = g as usize;
        self.dirty[gi] = true;
        let name = names::FLOWS[gi];
        let mut cursor = BatchDrain::new(
            raw_fd(&self.flows[gi]),
            size_of::<FlowKey>(),
            size_of::<FlowStats>(),
            BATCH,
        )
        .read_only();
        let table = &self.tables[gi];
        let mut extra = Vec::new();
        let mut pending: HashMap_<u32, FlowStats> = HashMap_::new();
        loop {
            let n = cursor
                .next_batch()
                .map_err(|e| DrainError::Batch { name, source: e })?;
            if n == 0 {
                break;
            }
            for i in 0..n {
                let key = read_pod::<FlowKey>(cursor.key(i));
                let stats = read_pod::<FlowStats>(cursor.value(i));
                match table.find(&key) {
                    Some(slot) => {
                        merge(pending.entry(slot).or_insert_with(|| zero(&stats)), &stats)
                    }
                    None => extra.push((key, stats)),
                }
            }
        }
        let fill = self.fill.get(&g, 0).unwrap_or(0);
        Ok(GenerationDrain {
            maps: self,
            gen: g,
            fill,
            next: 0,
            pending,
            extra,
            cached,
        })
    }

    /// The CPUs' cache slots of generation `g` tagged `tag`, summed per stream.
    fn cached(&self, g: u32, tag: u32) -> Result<HashMap_<FlowKey, CacheSlot>, DrainError> {
        let mut out: HashMap_<FlowKey, CacheSlot> = HashMap_::new();
        let name = names::CACHE;
        for cpu in 0..self.cache.len() / 2 {
            let slots = self
                .cache
                .get(&flowlog_common::cache_element(cpu, g), 0)
                .map_err(|source| DrainError::Read { name, source })?;
            for slot in slots.iter().filter(|s| s.tag == tag && s.packets > 0) {
                out.entry(slot.key)
                    .and_modify(|d| {
                        d.packets += slot.packets;
                        d.bytes += slot.bytes;
                        d.tcp_flags |= slot.tcp_flags;
                        d.rule_id = slot.rule_id;
                    })
                    .or_insert(*slot);
            }
        }
        Ok(out)
    }

    /// Ends the current window: switches the programs to the other generation and
    /// waits for in-flight programs. The returned cursor drains the old generation.
    pub fn switch(&mut self) -> Result<GenerationDrain<'_>, DrainError> {
        let old = self.active;
        let new = old ^ 1;
        if self.dirty[new as usize] {
            self.clear(new)?;
        }
        let old_counter = self.counter;
        let new_counter = old_counter.wrapping_add(1);
        self.config
            .set(config::GENERATION, new_counter, 0)
            .map_err(DrainError::Switch)?;
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let last = self.config.get(&config::LAST_SWITCH_S, 0).unwrap_or(0);
        self.config
            .set(config::PREV_SWITCH_S, last, 0)
            .map_err(DrainError::Switch)?;
        self.config
            .set(config::LAST_SWITCH_S, now_s, 0)
            .map_err(DrainError::Switch)?;
        self.barrier.synchronize()?;
        self.active = new;
        self.counter = new_counter;
        self.generation(old, old_counter.wrapping_add(1))
    }

    /// Switches generation and drains everything at once (tests, benchmarks; the
    /// agent streams with [`FlowMaps::switch`]).
    pub fn switch_and_drain(&mut self) -> Result<Drained, DrainError> {
        let mut g = self.switch()?;
        let mut out = Drained::default();
        while g.next_batch(&mut out.flows)? {}
        out.skipped = g.finish()?;
        self.clear_idle()?;
        Ok(out)
    }

    /// Step 4: empties the generation drained last (call once its records are out).
    pub fn clear_idle(&mut self) -> Result<(), DrainError> {
        let idle = self.active ^ 1;
        // Its records are out: a successor must not emit it again.
        self.config
            .set(config::EMITTED, idle + 1, 0)
            .map_err(DrainError::Switch)?;
        if self.dirty[idle as usize] {
            self.clear(idle)?;
        }
        Ok(())
    }

    fn clear(&mut self, gen: u32) -> Result<(), DrainError> {
        let g = gen as usize;
        let fill = self.fill.get(&gen, 0).unwrap_or(u64::MAX);
        self.tables[g].clear(fill);
        self.fill.set(gen, 0, 0).map_err(DrainError::Switch)?;
        let name = names::FLOWS[g];
        let mut cursor = BatchDrain::new(
            raw_fd(&self.flows[g]),
            size_of::<FlowKey>(),
            size_of::<FlowStats>(),
            BATCH,
        );
        while cursor
            .next_batch()
            .map_err(|e| DrainError::Batch { name, source: e })?
            > 0
        {}
        self.dirty[g] = false;
        Ok(())
    }

    /// Totals of the data path's event counters since load, indexed by
    /// [`flowlog_common::counter`].
    pub fn counters(&self) -> Result<[u64; counter::NAMES.len()], DrainError> {
        let mut out = [0u64; counter::NAMES.len()];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|source| DrainError::Read {
                    name: names::COUNTERS,
                    source,
                })?;
            *slot = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// Everything one generation held: the streams of one window and what was skipped.
#[derive(Debug, Default)]
pub struct Drained {
    /// Streams with their counters.
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// Skip counters per interface index.
    pub skipped: Vec<(u32, SkipStats)>,
}

/// A stream with no counts yet, identity fields of `like` (for merging into).
fn zero(like: &FlowStats) -> FlowStats {
    FlowStats {
        packets: 0,
        bytes: 0,
        first_ns: u64::MAX,
        last_ns: 0,
        tcp_flags: 0,
        closed: 0,
        ..*like
    }
}

/// Drains one generation that no program writes any more, batch by batch: its table
/// slots in the order they were placed, then the overflow streams that have no slot.
pub struct GenerationDrain<'a> {
    maps: &'a mut FlowMaps,
    gen: u32,
    /// Slots handed out in the window, and the next one to read.
    fill: u64,
    next: u32,
    /// Overflow counters of streams that also have a table slot, by slot.
    pending: HashMap_<u32, FlowStats>,
    /// Overflow streams without a table slot, emitted after the table.
    extra: Vec<(FlowKey, FlowStats)>,
    /// The CPUs' cached counters of this generation, added to their streams as they
    /// are read.
    cached: HashMap_<FlowKey, CacheSlot>,
}

impl GenerationDrain<'_> {
    /// Appends the next batch of streams to `out` (the maps keep them until
    /// [`FlowMaps::clear_idle`]). Returns false once every stream was read.
    pub fn next_batch(&mut self, out: &mut Vec<(FlowKey, FlowStats)>) -> Result<bool, DrainError> {
        let start = out.len();
        let table = &self.maps.tables[self.gen as usize];
        let end = self.fill.min(u64::from(table.slots())) as u32;
        while self.next < end && out.len() - start < BATCH {
            let i = self.next;
            self.next += 1;
            let s = table.slots.get(i);
            // An unused slot (its stream went to the overflow map).
            if s.stats.packets == 0 {
                continue;
            }
            let mut stats = s.stats;
            if !self.pending.is_empty() {
                if let Some(p) = self.pending.remove(&i) {
                    merge(&mut stats, &p);
                }
            }
            out.push((s.key, stats));
        }
        let table_done = self.next >= end;
        if table_done {
            out.append(&mut self.extra);
        }
        if !self.cached.is_empty() {
            for (key, stats) in &mut out[start..] {
                if let Some(c) = self.cached.remove(key) {
                    stats.packets += c.packets;
                    stats.bytes += c.bytes;
                    stats.tcp_flags |= c.tcp_flags;
                    stats.rule_id = c.rule_id;
                }
            }
        }
        Ok(!table_done)
    }

    /// Reads and clears the generation's skip counters and skipped-stream set.
    /// Call after the streams are drained.
    pub fn finish(self) -> Result<Vec<(u32, SkipStats)>, DrainError> {
        if !self.cached.is_empty() {
            // A slot is claimed only after its stream's entry exists, and entries are
            // not removed within a window: this cannot happen; say so if it does.
            tracing::error!(
                streams = self.cached.len(),
                packets = self.cached.values().map(|c| c.packets).sum::<u64>(),
                "cached counters without a flow-map entry: not recorded"
            );
        }
        let g = self.gen as usize;
        let maps = self.maps;
        let skipped_name = names::SKIPPED_STREAMS[g];
        let mut set = BatchDrain::new(raw_fd(&maps.skipped[g]), size_of::<FlowKey>(), 8, 1024);
        while set.next_batch().map_err(|e| DrainError::Batch {
            name: skipped_name,
            source: e,
        })? > 0
        {}

        let mut out = Vec::new();
        let mut stale = Vec::new();
        for item in maps.skip_stats.iter() {
            let (key, stats) = item.map_err(|source| DrainError::Read {
                name: names::SKIP_STATS,
                source,
            })?;
            if key.generation != self.gen {
                continue;
            }
            out.push((key.ifindex, stats));
            stale.push(key);
        }
        for key in &stale {
            maps.skip_stats
                .remove(key)
                .map_err(|source| DrainError::Clear {
                    name: names::SKIP_STATS,
                    source,
                })?;
        }
        Ok(out)
    }
}
