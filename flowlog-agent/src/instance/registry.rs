//! The flow logs of the node: specs, states, the quota, and the state file.
//!
//! Instances come from three places: the command line (`flowlog run --interface`, the
//! implicit instance `cli`), the config file (`[[flow_log]]`) and the control socket
//! (`flowlog create`). Those created through the socket are saved in
//! `<state_dir>/flow-logs.json` with their state, as are start/stop of declared ones;
//! the file is replaced atomically (write, fsync, rename, fsync the directory) after
//! every change, so an agent restart finds exactly what was acknowledged.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{FlowLogFile, FlowLogSpec, InstanceError};

/// Where an instance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `flowlog run --interface ...`.
    Cli,
    /// `[[flow_log]]` in the config file.
    Config,
    /// `flowlog create`.
    Api,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub spec: FlowLogSpec,
    pub active: bool,
    pub origin: Origin,
}

/// The state file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    /// Instances created through the control socket.
    #[serde(default)]
    pub flow_logs: Vec<FlowLogFile>,
    /// Declared instances stopped through the control socket.
    #[serde(default)]
    pub stopped: Vec<String>,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the saved flow logs {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the saved flow logs {} are not valid: {message} (fix or remove the file)", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("saving the flow logs to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Registry {
    entries: Vec<Entry>,
    max: usize,
    state_dir: Option<PathBuf>,
}

const STATE_FILE: &str = "flow-logs.json";

impl Registry {
    pub fn new(max: usize, state_dir: Option<PathBuf>) -> Self {
        Self {
            entries: Vec::new(),
            max,
            state_dir,
        }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.spec.name == name)
    }

    /// Adds a declared (CLI or config) instance at start-up.
    pub fn declare(
        &mut self,
        spec: FlowLogSpec,
        active: bool,
        origin: Origin,
    ) -> Result<(), InstanceError> {
        self.check_new(&spec.name)?;
        self.entries.push(Entry {
            spec,
            active,
            origin,
        });
        Ok(())
    }

    fn check_new(&self, name: &str) -> Result<(), InstanceError> {
        if self.get(name).is_some() {
            return Err(InstanceError::Duplicate {
                name: name.to_owned(),
            });
        }
        if self.entries.len() >= self.max {
            return Err(InstanceError::Quota { max: self.max });
        }
        Ok(())
    }

    /// `flowlog create`: adds and saves.
    pub fn create(&mut self, spec: FlowLogSpec, active: bool) -> Result<(), RegistryError> {
        self.check_new(&spec.name)?;
        self.entries.push(Entry {
            spec,
            active,
            origin: Origin::Api,
        });
        if let Err(e) = self.save() {
            self.entries.pop();
            return Err(e.into());
        }
        Ok(())
    }

    /// `flowlog start` / `stop`: returns whether the state changed.
    pub fn set_active(&mut self, name: &str, active: bool) -> Result<bool, RegistryError> {
        let i = self.index(name)?;
        if self.entries[i].active == active {
            return Ok(false);
        }
        self.entries[i].active = active;
        if let Err(e) = self.save() {
            self.entries[i].active = !active;
            return Err(e.into());
        }
        Ok(true)
    }

    /// `flowlog delete`: only instances created through the socket.
    pub fn delete(&mut self, name: &str) -> Result<Entry, RegistryError> {
        let i = self.index(name)?;
        if self.entries[i].origin != Origin::Api {
            return Err(InstanceError::Declared {
                name: name.to_owned(),
            }
            .into());
        }
        let e = self.entries.remove(i);
        if let Err(err) = self.save() {
            self.entries.insert(i, e);
            return Err(err.into());
        }
        Ok(e)
    }

    fn index(&self, name: &str) -> Result<usize, InstanceError> {
        self.entries
            .iter()
            .position(|e| e.spec.name == name)
            .ok_or_else(|| InstanceError::Unknown {
                name: name.to_owned(),
            })
    }

    fn path(&self) -> Option<PathBuf> {
        self.state_dir.as_ref().map(|d| d.join(STATE_FILE))
    }

    /// Reads the saved state (none: empty).
    pub fn load_state(&self) -> Result<StateFile, StateError> {
        let Some(path) = self.path() else {
            return Ok(StateFile::default());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_str(&text).map_err(|e| StateError::Parse {
            path,
            message: e.to_string(),
        })
    }

    /// Applies the saved stops to declared instances.
    pub fn apply_stops(&mut self, stopped: &[String]) {
        for e in &mut self.entries {
            if e.origin != Origin::Api && stopped.contains(&e.spec.name) {
                e.active = false;
            }
        }
    }

    /// Adds a saved instance at start-up (origin API).
    pub fn restore(&mut self, spec: FlowLogSpec, active: bool) -> Result<(), InstanceError> {
        self.check_new(&spec.name)?;
        self.entries.push(Entry {
            spec,
            active,
            origin: Origin::Api,
        });
        Ok(())
    }

    fn save(&self) -> Result<(), StateError> {
        let Some(path) = self.path() else {
            return Ok(());
        };
        let state = StateFile {
            version: 1,
            flow_logs: self
                .entries
                .iter()
                .filter(|e| e.origin == Origin::Api)
                .map(|e| e.spec.to_file(e.active))
                .collect(),
            stopped: self
                .entries
                .iter()
                .filter(|e| e.origin != Origin::Api && !e.active)
                .map(|e| e.spec.name.clone())
                .collect(),
        };
        let text = serde_json::to_vec_pretty(&state).expect("state serializes");
        write_atomic(&path, &text).map_err(|source| StateError::Write { path, source })
    }
}

/// Replaces `path` with `data`: a reader sees the old or the new content, never a
/// mix, also across a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A registry change that failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Request(#[from] InstanceError),
    #[error(transparent)]
    State(#[from] StateError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::{Checks, FlowLogFile};

    fn spec(name: &str) -> FlowLogSpec {
        let f = FlowLogFile {
            name: name.into(),
            resource_type: "VPC".into(),
            ..Default::default()
        };
        let c = Checks {
            interface_exists: None,
            bridge_exists: &|_| true,
            paths_configured: false,
            sinks: &[],
        };
        FlowLogSpec::validate(&f, &c).unwrap().0
    }

    #[test]
    fn quota_duplicates_and_persistence() {
        let dir = std::env::temp_dir().join(format!("flowlog-registry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut r = Registry::new(3, Some(dir.clone()));
        r.declare(spec("cli"), true, Origin::Cli).unwrap();
        r.create(spec("a"), true).unwrap();
        r.create(spec("b"), false).unwrap();
        assert!(matches!(
            r.create(spec("a"), true),
            Err(RegistryError::Request(InstanceError::Duplicate { .. }))
        ));
        assert!(matches!(
            r.create(spec("c"), true),
            Err(RegistryError::Request(InstanceError::Quota { max: 3 }))
        ));
        assert!(r.set_active("b", true).unwrap());
        assert!(!r.set_active("b", true).unwrap());
        assert!(r.set_active("cli", false).unwrap());
        assert!(matches!(
            r.delete("cli"),
            Err(RegistryError::Request(InstanceError::Declared { .. }))
        ));
        r.delete("a").unwrap();
        assert!(matches!(
            r.delete("a"),
            Err(RegistryError::Request(InstanceError::Unknown { .. }))
        ));

        // A new agent finds what was acknowledged.
        let r2 = Registry::new(3, Some(dir.clone()));
        let st = r2.load_state().unwrap();
        assert_eq!(st.flow_logs.len(), 1);
        assert_eq!(st.flow_logs[0].name, "b");
        assert_eq!(st.flow_logs[0].state.as_deref(), Some("active"));
        assert_eq!(st.stopped, ["cli"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
