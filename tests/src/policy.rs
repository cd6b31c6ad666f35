//! Policy files for the agent's `--policy FILE`: a temporary file removed on drop,
//! rewritten atomically (write + rename) for reloads on SIGHUP.
use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A policy file under the system temp directory, deleted when dropped.
#[derive(Debug)]
pub struct PolicyFile {
    path: PathBuf,
}

impl PolicyFile {
    /// Creates `flowlog-policy-<tag>-<pid>-<n>.toml` holding `text`.
    pub fn new(tag: &str, text: &str) -> PolicyFile {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "flowlog-policy-{tag}-{}-{n}.toml",
            std::process::id()
        ));
        let f = PolicyFile { path };
        f.write(text);
        f
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string (for the agent's command line).
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("temp path is UTF-8")
    }

    /// Replaces the content atomically: a reader sees the old or the new text.
    pub fn write(&self, text: &str) {
        let tmp = self.path.with_extension("toml.tmp");
        fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        fs::rename(&tmp, &self.path)
            .unwrap_or_else(|e| panic!("renaming to {}: {e}", self.path.display()));
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}
