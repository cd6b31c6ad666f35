//! Draining the kernel's flow maps at a window boundary, without losing or double
//! counting a single increment while traffic flows.
//!
//! ```text
//!   programs ──write──▶ FLOWS_<active>          agent
//!                                               1. CONFIG[GENERATION] = active ^ 1
//!                                               2. RcuBarrier::synchronize()  (grace period)
//!                                               3. read + delete FLOWS_<old>, SKIPPED_<old>,
//!                                                  SKIP_STATS{gen = old}
//! ```
//!
//! Why this is exact: a program reads the generation once, at its start, and the
//! whole run is one RCU read-side critical section. A program that started before
//! step 1 may still write the old maps, but it finishes before step 2 returns; every
//! program that starts after step 1 sees the new generation. So once step 2 returns,
//! nothing writes the old maps and step 3 reads final values; an increment lands in
//! exactly one generation and is drained exactly once. (A packet that raced the
//! switch is reported in the window that ends at this boundary.)
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
    Ebpf,
};
use flowlog_common::{config, counter, names, FlowKey, FlowStats, SkipKey, SkipStats};

use crate::rcu::{RcuBarrier, RcuError};

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
    #[error(transparent)]
    Rcu(#[from] RcuError),
}

/// Everything one generation held: the streams of one window and what was skipped.
#[derive(Debug, Default)]
pub struct Drained {
    /// Streams with counters summed over CPUs.
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// Skip counters per interface index.
    pub skipped: Vec<(u32, SkipStats)>,
}

/// Userspace handles on the data-path maps.
pub struct FlowMaps {
    flows: [PerCpuHashMap<MapData, FlowKey, FlowStats>; 2],
    skipped: [HashMap<MapData, FlowKey, u8>; 2],
    skip_stats: PerCpuHashMap<MapData, SkipKey, SkipStats>,
    config: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    barrier: RcuBarrier,
    active: u32,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DrainError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DrainError::MissingMap { name })?;
    T::try_from(map).map_err(|source| DrainError::MapType { name, source })
}

impl FlowMaps {
    /// Takes the maps out of a loaded object and makes generation 0 active.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DrainError> {
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
        };
        maps.config
            .set(config::GENERATION, 0, 0)
            .map_err(DrainError::Switch)?;
        Ok(maps)
    }

    /// Ends the current window: switches the programs to the other generation, waits
    /// for in-flight programs, then drains and clears the old generation.
    pub fn switch_and_drain(&mut self) -> Result<Drained, DrainError> {
        let old = self.active;
        let new = old ^ 1;
        self.config
            .set(config::GENERATION, new, 0)
            .map_err(DrainError::Switch)?;
        self.barrier.synchronize()?;
        self.active = new;
        self.drain_generation(old)
    }

    fn drain_generation(&mut self, gen: u32) -> Result<Drained, DrainError> {
        let g = gen as usize;
        let flows_name = names::FLOWS[g];
        let mut out = Drained::default();
        for item in self.flows[g].iter() {
            let (key, per_cpu) = item.map_err(|source| DrainError::Read {
                name: flows_name,
                source,
            })?;
            let mut total = FlowStats::default();
            for v in per_cpu.iter() {
                total.merge(v);
            }
            out.flows.push((key, total));
        }
        for (key, _) in &out.flows {
            self.flows[g]
                .remove(key)
                .map_err(|source| DrainError::Clear {
                    name: flows_name,
                    source,
                })?;
        }

        let skipped_name = names::SKIPPED_STREAMS[g];
        let skipped_keys = self.skipped[g]
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DrainError::Read {
                name: skipped_name,
                source,
            })?;
        for key in &skipped_keys {
            self.skipped[g]
                .remove(key)
                .map_err(|source| DrainError::Clear {
                    name: skipped_name,
                    source,
                })?;
        }

        let mut stale = Vec::new();
        for item in self.skip_stats.iter() {
            let (key, per_cpu) = item.map_err(|source| DrainError::Read {
                name: names::SKIP_STATS,
                source,
            })?;
            if key.generation != gen {
                continue;
            }
            let mut total = SkipStats::default();
            for v in per_cpu.iter() {
                total.merge(v);
            }
            out.skipped.push((key.ifindex, total));
            stale.push(key);
        }
        for key in &stale {
            self.skip_stats
                .remove(key)
                .map_err(|source| DrainError::Clear {
                    name: names::SKIP_STATS,
                    source,
                })?;
        }
        Ok(out)
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
