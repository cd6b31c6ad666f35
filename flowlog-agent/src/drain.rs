//! Draining the kernel's flow maps at a window boundary, without losing or double
//! counting a single increment while traffic flows.
//!
//! ```text
//!   programs ──write──▶ FLOWS_<active>          agent
//!                                               1. CONFIG[GENERATION] += 1 (parity = active)
//!                                               2. RcuBarrier::synchronize()  (grace period)
//!                                               3. read FLOWS_<old> in batches
//!                                                  (BPF_MAP_LOOKUP_BATCH), render, write;
//!                                                  read + delete SKIPPED_<old>,
//!                                                  SKIP_STATS{gen = old}
//!                                               4. after the records are out: clear
//!                                                  FLOWS_<old> (LOOKUP_AND_DELETE_BATCH)
//! ```
//!
//! Why this is exact: a program reads the generation once, at its start, and the
//! whole run is one RCU read-side critical section. A program that started before
//! step 1 may still write the old maps, but it finishes before step 2 returns; every
//! program that starts after step 1 sees the new generation. So once step 2 returns,
//! nothing writes the old maps and step 3 reads final values; an increment lands in
//! exactly one generation and is drained exactly once. (A packet that raced the
//! switch is reported in the window that ends at this boundary.)
//!
//! Step 4 is off the boundary's critical path: deleting a million entries costs about
//! as much as reading them, and the old generation is idle for a whole window. A
//! generation that is still uncleared when it is about to become active again (the
//! agent skipped step 4) is cleared first, so programs never add to stale entries.
use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use aya::{
    maps::{Array, HashMap, IterableMap, MapData, MapError, PerCpuArray},
    Ebpf,
};
use std::collections::HashMap as HashMap_;

use flowlog_common::{config, counter, names, CacheSlot, FlowKey, FlowStats, SkipKey, SkipStats};

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
    #[error(transparent)]
    Rcu(#[from] RcuError),
}

/// Streams drained per system call.
pub const BATCH: usize = 8192;

/// Userspace handles on the data-path maps.
pub struct FlowMaps {
    flows: [HashMap<MapData, FlowKey, FlowStats>; 2],
    skipped: [HashMap<MapData, FlowKey, u8>; 2],
    skip_stats: HashMap<MapData, SkipKey, SkipStats>,
    config: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    barrier: RcuBarrier,
    active: u32,
    /// `CONFIG[GENERATION]`: the window counter (`& 1` = `active`).
    counter: u32,
    /// The per-CPU stream caches of the two generations.
    cache: [PerCpuArray<MapData, CacheSlot>; 2],
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
    /// Takes the maps out of a loaded object and makes generation 0 active.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DrainError> {
        Self::take_with(ebpf, None, 0)
    }

    /// As [`FlowMaps::take`]; with `adopted` (pinned maps of a previous agent) the
    /// active generation stays and the idle one is marked for clearing; fresh maps get
    /// their `shape` and layout version written.
    pub fn take_with(
        ebpf: &mut Ebpf,
        adopted: Option<crate::pin::Adopted>,
        shape: u32,
    ) -> Result<Self, DrainError> {
        let mut maps = Self {
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
            cache: [take(ebpf, names::CACHE[0])?, take(ebpf, names::CACHE[1])?],
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
                ] {
                    maps.config.set(slot, v, 0).map_err(DrainError::Switch)?;
                }
            }
        }
        Ok(maps)
    }

    /// Whether the idle generation holds streams whose records never went out (a
    /// previous agent stopped between a switch and the end of its emission).
    pub fn idle_unemitted(&self) -> bool {
        let idle = self.active ^ 1;
        let emitted = self.config.get(&config::EMITTED, 0).unwrap_or(0);
        emitted != idle + 1 && self.flows[idle as usize].keys().next().is_some()
    }

    /// Drains the idle generation without switching (see [`FlowMaps::idle_unemitted`]).
    pub fn drain_idle(&mut self) -> Result<GenerationDrain<'_>, DrainError> {
        let g = self.active ^ 1;
        let cursor = BatchDrain::new(
            raw_fd(&self.flows[g as usize]),
            size_of::<FlowKey>(),
            size_of::<FlowStats>(),
            BATCH,
        )
        .read_only();
        self.dirty[g as usize] = true;
        // The idle generation's window had counter - 1, its slots tag `counter`.
        let cached = self.cached(g, self.counter)?;
        Ok(GenerationDrain {
            maps: self,
            gen: g,
            cursor,
            cached,
        })
    }

    /// The per-CPU cache slots of generation `g` tagged `tag`, summed per stream.
    fn cached(&self, g: u32, tag: u32) -> Result<HashMap_<FlowKey, CacheSlot>, DrainError> {
        let mut out: HashMap_<FlowKey, CacheSlot> = HashMap_::new();
        let name = names::CACHE[g as usize];
        for i in 0..flowlog_common::CACHE_SLOTS {
            let per_cpu = self.cache[g as usize]
                .get(&i, 0)
                .map_err(|source| DrainError::Read { name, source })?;
            for slot in per_cpu.iter().filter(|s| s.tag == tag && s.packets > 0) {
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
        let cached = self.cached(old, old_counter.wrapping_add(1))?;
        let g = old as usize;
        let cursor = BatchDrain::new(
            raw_fd(&self.flows[g]),
            size_of::<FlowKey>(),
            size_of::<FlowStats>(),
            BATCH,
        )
        .read_only();
        self.dirty[g] = true;
        Ok(GenerationDrain {
            maps: self,
            gen: old,
            cursor,
            cached,
        })
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

/// Drains one generation that no program writes any more, batch by batch.
pub struct GenerationDrain<'a> {
    maps: &'a mut FlowMaps,
    gen: u32,
    cursor: BatchDrain,
    /// The CPUs' cached counters of this generation, added to their streams as they
    /// are read.
    cached: HashMap_<FlowKey, CacheSlot>,
}

impl GenerationDrain<'_> {
    /// Appends the next batch of streams to `out` (the map keeps them until
    /// [`FlowMaps::clear_idle`]). Returns false once every stream was read.
    pub fn next_batch(&mut self, out: &mut Vec<(FlowKey, FlowStats)>) -> Result<bool, DrainError> {
        let name = names::FLOWS[self.gen as usize];
        let n = self
            .cursor
            .next_batch()
            .map_err(|e| DrainError::Batch { name, source: e })?;
        let start = out.len();
        out.extend((0..n).map(|i| {
            (
                read_pod::<FlowKey>(self.cursor.key(i)),
                read_pod::<FlowStats>(self.cursor.value(i)),
            )
        }));
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
        Ok(n > 0)
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
