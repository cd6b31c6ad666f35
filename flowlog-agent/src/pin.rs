//! Surviving the agent: maps and links pinned in bpffs, adopted by the next agent.
//!
//! ```text
//! <pin dir>/v<LAYOUT_VERSION>/maps/<MAP>            every map but the log ring
//! <pin dir>/v<LAYOUT_VERSION>/links/<ifindex>-<hook> each TCX/XDP link (hook: ingress,
//!                                                    egress)
//! ```
//!
//! While the agent runs, the programs count into pinned maps through pinned links, so
//! a crash, an OOM kill or SIGKILL stops nothing on the data path. The next agent finds
//! the pins: if their layout version and shape (`CONFIG[LAYOUT]`, `CONFIG[SHAPE]`:
//! `max_flows`, policy maps sized or not) are its own, it reuses the maps, replaces
//! the program of every pinned link with its own (`BPF_LINK_UPDATE`, atomic) and
//! drains at the next boundary what the old agent left, its windows starting at the
//! old agent's last switch. Anything else (another layout version, another shape) is
//! detached and removed, with a warning saying what could not be carried over: an
//! agent never reads maps it does not understand.
//!
//! A clean stop (SIGINT/SIGTERM) detaches and removes the pins; SIGUSR2 hands over:
//! the agent emits its partial windows and exits leaving everything attached and pinned
//! for the next one (an upgrade without a gap). `flowlog run --cleanup` removes
//! everything pinned on purpose.
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError};
use flowlog_common::{config, names, LAYOUT_VERSION};
use tracing::{info, warn};

/// `f_type` of a bpf filesystem (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--pin-dir {}: not on a bpf filesystem (mount one: mount -t bpf bpf {})", path.display(), path.display())]
    NotBpffs { path: PathBuf },
    #[error("pin directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pinned map {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

/// Whether `path` (or its nearest existing ancestor) is on a bpf filesystem.
pub fn on_bpffs(path: &Path) -> bool {
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.exists() {
            let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: valid C string and out-pointer.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
                return false;
            }
            return st.f_type as i64 == BPF_FS_MAGIC;
        }
        p = dir.parent();
    }
    false
}

/// What a previous agent left that this one adopts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Unix seconds of its last switch (0: none).
    pub last_switch_s: u32,
    /// Unix seconds of the switch before (where the idle generation's window began).
    pub prev_switch_s: u32,
    /// `CONFIG[GENERATION]`: the window counter (`& 1`: the active generation).
    pub generation: u32,
    /// `CONFIG[EMITTED]`.
    pub emitted: u32,
}

/// The pin directory of this layout version.
#[derive(Debug, Clone)]
pub struct Pins {
    pub root: PathBuf,
    pub dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The `max_flows` bits of a shape word.
pub const SHAPE_FLOWS: u32 = 0x7fff_ffff;

/// The shape word of `CONFIG[SHAPE]`.
pub fn shape(max_flows: u32, policy: bool) -> u32 {
    max_flows | (u32::from(policy) << 31)
}

impl Pins {
    /// Checks the directory, removes what another layout version or shape left, and
    /// says whether there is something to adopt.
    pub fn prepare(root: &Path, shape: u32) -> Result<(Pins, Option<Adopted>), PinError> {
        if !on_bpffs(root) {
            return Err(PinError::NotBpffs {
                path: root.to_owned(),
            });
        }
        std::fs::create_dir_all(root).map_err(io(root))?;
        let this = format!("v{LAYOUT_VERSION}");
        for e in std::fs::read_dir(root).map_err(io(root))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != this && name.starts_with('v') {
                let (links, maps) = remove_tree(&e.path())?;
                warn!(
                    layout = %name,
                    links,
                    maps,
                    "pins of another layout version detached and removed: their counts since that agent's last window cannot be read by this version"
                );
            }
        }
        let pins = Pins {
            root: root.to_owned(),
            dir: root.join(this),
        };
        let config_pin = pins.map_path(names::CONFIG);
        let mut adopted = None;
        if config_pin.exists() {
            let data = MapData::from_pin(&config_pin).map_err(|source| PinError::Map {
                path: config_pin.clone(),
                source,
            })?;
            let cfg: Array<MapData, u32> =
                Array::try_from(Map::Array(data)).map_err(|source| PinError::Map {
                    path: config_pin.clone(),
                    source,
                })?;
            let get = |i| cfg.get(&i, 0).unwrap_or(0);
            if get(config::LAYOUT) == LAYOUT_VERSION && get(config::SHAPE) == shape {
                adopted = Some(Adopted {
                    last_switch_s: get(config::LAST_SWITCH_S),
                    prev_switch_s: get(config::PREV_SWITCH_S),
                    generation: get(config::GENERATION),
                    emitted: get(config::EMITTED),
                });
            } else {
                drop(cfg);
                let (links, maps) = remove_tree(&pins.dir)?;
                warn!(
                    links,
                    maps,
                    "pinned maps of another shape (max_flows or policy changed) detached and removed: counts since the previous agent's last window are lost"
                );
            }
        }
        for sub in ["maps", "links"] {
            let d = pins.dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok((pins, adopted))
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn link_path(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{ifindex}-{hook}"))
    }

    /// Pinned links: (ifindex, hook, path).
    pub fn links(&self) -> Vec<(u32, String, PathBuf)> {
        let dir = self.dir.join("links");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out: Vec<(u32, String, PathBuf)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (i, hook) = name.split_once('-')?;
                Some((i.parse().ok()?, hook.to_owned(), e.path()))
            })
            .collect();
        out.sort();
        out
    }
}

/// Removes a version directory: links first (unpinning the last reference detaches
/// them), then maps. Returns (links, maps) removed.
fn remove_tree(dir: &Path) -> Result<(usize, usize), PinError> {
    let mut counts = [0usize; 2];
    for (i, sub) in ["links", "maps"].iter().enumerate() {
        let d = dir.join(sub);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
                counts[i] += 1;
            }
            std::fs::remove_dir(&d).map_err(io(&d))?;
        }
    }
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io(dir))?;
    }
    Ok((counts[0], counts[1]))
}

/// `flowlog run --cleanup`: removes every version under `root`. Returns (links, maps).
pub fn cleanup(root: &Path) -> Result<(usize, usize), PinError> {
    let mut total = (0, 0);
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(total);
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with('v') {
            let (l, m) = remove_tree(&e.path())?;
            total.0 += l;
            total.1 += m;
        }
    }
    let _ = std::fs::remove_dir(root);
    info!(links = total.0, maps = total.1, dir = %root.display(), "pins removed");
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_bpffs_detection() {
        assert_eq!(shape(65536, false), 65536);
        assert_eq!(shape(65536, true), 65536 | 1 << 31);
        assert!(!on_bpffs(&std::env::temp_dir()));
        assert!(matches!(
            Pins::prepare(&std::env::temp_dir().join("x"), 1),
            Err(PinError::NotBpffs { .. })
        ));
    }
}
