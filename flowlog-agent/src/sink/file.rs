//! The `file` sink of `[[sink]]`: JSON lines in a directory, rotated and pruned.
//!
//! ```text
//! DIR/flows-20261202T093800Z.json        finished files: complete lines only, fsync'd,
//! DIR/flows-20261202T103800Z.json        named by the start of their first window
//! DIR/flows-20261202T113800Z.json.part   the file being written
//! ```
//!
//! * Records go to the `.part` file; at the end of every window it is fsync'd.
//! * Rotation: when the part file reaches `rotate_bytes` or has been open for
//!   `rotate_seconds`, at a window's end it is renamed to its final name (and the
//!   directory fsync'd). A reader that takes only names without `.part` never sees a
//!   partial line; names sort by time.
//! * Retention, after each rotation and at start-up: finished files older than
//!   `retention` are deleted, then the oldest until the finished files total at most
//!   `retention_bytes`. The part file is never deleted.
//! * Restart: a `.part` file left by a previous run (a crash, SIGKILL) is finished at
//!   start-up: cut after its last complete line (the only loss a crash can cause is a
//!   window not yet flushed), renamed, and counted in the log.
//! * On stop the part file is finished, so a clean stop leaves no `.part`.
use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{fs, io::AsyncWriteExt as _};
use tracing::info;

use super::{Sink, SinkError, SinkFuture};

/// Rotation and retention of a `file` sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSettings {
    pub dir: PathBuf,
    /// Rotate once the part file holds this many bytes.
    pub rotate_bytes: u64,
    /// Rotate once the part file was opened this long ago.
    pub rotate_after: Duration,
    /// Delete finished files older than this.
    pub retention: Duration,
    /// Keep at most this many bytes of finished files (`None`: no limit).
    pub retention_bytes: Option<u64>,
    /// `text` format (header at the top of every file); `None`: JSON lines.
    pub text: Option<super::text::TextFormat>,
}

impl DirSettings {
    pub const DEFAULT_ROTATE_BYTES: u64 = 128 * 1024 * 1024;
    pub const DEFAULT_ROTATE_AFTER: Duration = Duration::from_secs(3600);
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
}

const PREFIX: &str = "flows-";
const PART: &str = ".part";

struct Part {
    file: fs::File,
    path: PathBuf,
    /// Final name once rotated.
    target: PathBuf,
    bytes: u64,
    /// Length at the end of the last window that reached the disk whole.
    synced: u64,
    opened: SystemTime,
}

impl Part {
    /// After a failed write or flush (a full disk): cut the file back to the last
    /// whole window and reopen it, so that no half line is ever continued.
    async fn rewind(&mut self) {
        let std_file = std::fs::OpenOptions::new().write(true).open(&self.path);
        if let Ok(f) = std_file {
            let _ = f.set_len(self.synced);
        }
        if let Ok(f) = fs::OpenOptions::new().append(true).open(&self.path).await {
            self.file = f;
        }
        self.bytes = self.synced;
    }
}

/// The rotating directory sink.
pub struct DirSink {
    name: String,
    settings: DirSettings,
    part: Option<Part>,
}

fn io_err(sink: &str, source: io::Error) -> SinkError {
    SinkError::Write {
        sink: sink.to_string(),
        source,
    }
}

/// `flows-YYYYMMDDTHHMMSSZ` of `t` (UTC).
fn stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{PREFIX}{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl DirSink {
    /// Creates the directory (mode 0750) if needed, finishes `.part` files of an
    /// earlier run and applies retention.
    pub async fn open(name: &str, settings: DirSettings) -> Result<DirSink, SinkError> {
        let dir = settings.dir.clone();
        let open_err = |source| SinkError::Open {
            path: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&settings.dir)
            .await
            .map_err(open_err)?;
        let sink = DirSink {
            name: name.to_string(),
            settings,
            part: None,
        };
        let mut rd = fs::read_dir(&sink.settings.dir).await.map_err(open_err)?;
        while let Some(e) = rd.next_entry().await.map_err(open_err)? {
            let path = e.path();
            let Some(fname) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if fname.starts_with(PREFIX) && fname.ends_with(PART) {
                let cut = sink.recover(&path).await.map_err(open_err)?;
                info!(sink = %sink.name, file = %path.display(), cut_bytes = cut, "finished a part file of an earlier run");
            }
        }
        sink.prune().await.map_err(open_err)?;
        Ok(sink)
    }

    /// Cuts `path` after its last complete line and renames it to its final name.
    /// `.json`, or `.txt` for the text format.
    fn suffix(&self) -> &'static str {
        if self.settings.text.is_some() {
            ".txt"
        } else {
            ".json"
        }
    }

    async fn recover(&self, path: &Path) -> io::Result<u64> {
        let data = fs::read(path).await?;
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let cut = (data.len() - keep) as u64;
        if cut > 0 {
            let f = fs::OpenOptions::new().write(true).open(path).await?;
            f.set_len(keep as u64).await?;
            f.sync_all().await?;
        }
        let fname = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let base = fname.trim_end_matches(PART);
        let base = base
            .strip_suffix(".json")
            .or_else(|| base.strip_suffix(".txt"))
            .unwrap_or(base);
        let target = self.free_name(base);
        fs::rename(path, &target).await?;
        Ok(cut)
    }

    /// `DIR/<base>.json`, or `DIR/<base>-N.json` if taken.
    fn free_name(&self, base: &str) -> PathBuf {
        let suffix = self.suffix();
        let mut candidate = self.settings.dir.join(format!("{base}{suffix}"));
        let mut n = 1;
        while candidate.exists() {
            candidate = self.settings.dir.join(format!("{base}-{n}{suffix}"));
            n += 1;
        }
        candidate
    }

    async fn open_part(&mut self) -> io::Result<&mut Part> {
        if self.part.is_none() {
            let now = SystemTime::now();
            let base = stamp(now);
            let target = self.free_name(&base);
            let path = PathBuf::from(format!("{}{PART}", target.display()));
            let mut file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&path)
                .await?;
            let mut bytes = 0;
            if let Some(text) = &self.settings.text {
                let header = text.header();
                file.write_all(&header).await?;
                bytes = header.len() as u64;
            }
            self.part = Some(Part {
                file,
                path,
                target,
                bytes,
                synced: bytes,
                opened: now,
            });
        }
        Ok(self.part.as_mut().expect("opened above"))
    }

    /// Renames the part file to its final name (after an fsync).
    async fn finish_part(&mut self) -> io::Result<()> {
        let Some(mut part) = self.part.take() else {
            return Ok(());
        };
        part.file.flush().await?;
        part.file.sync_all().await?;
        drop(part.file);
        fs::rename(&part.path, &part.target).await?;
        fs::File::open(&self.settings.dir).await?.sync_all().await?;
        self.prune().await
    }

    /// Finished files, oldest first: (path, size, modified).
    async fn finished(&self) -> io::Result<Vec<(PathBuf, u64, SystemTime)>> {
        let mut out = Vec::new();
        let mut rd = fs::read_dir(&self.settings.dir).await?;
        while let Some(e) = rd.next_entry().await? {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(PREFIX) && (name.ends_with(".json") || name.ends_with(".txt")) {
                let md = e.metadata().await?;
                out.push((e.path(), md.len(), md.modified()?));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Retention by age, then by total size (oldest first).
    async fn prune(&self) -> io::Result<()> {
        let files = self.finished().await?;
        let now = SystemTime::now();
        let mut kept = Vec::new();
        for (path, size, modified) in files {
            let age = now.duration_since(modified).unwrap_or_default();
            if age > self.settings.retention {
                fs::remove_file(&path).await?;
                info!(sink = %self.name, file = %path.display(), "retention: deleted (age)");
            } else {
                kept.push((path, size));
            }
        }
        if let Some(limit) = self.settings.retention_bytes {
            let mut total: u64 = kept.iter().map(|(_, s)| s).sum();
            for (path, size) in kept {
                if total <= limit {
                    break;
                }
                fs::remove_file(&path).await?;
                total -= size;
                info!(sink = %self.name, file = %path.display(), "retention: deleted (total size)");
            }
        }
        Ok(())
    }
}

impl Sink for DirSink {
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move {
            if lines.is_empty() {
                return Ok(());
            }
            let name = self.name.clone();
            let converted;
            let lines = match &self.settings.text {
                Some(text) => {
                    converted = text.convert(lines);
                    &converted[..]
                }
                None => lines,
            };
            let part = self.open_part().await.map_err(|e| io_err(&name, e))?;
            if let Err(e) = part.file.write_all(lines).await {
                part.rewind().await;
                return Err(io_err(&name, e));
            }
            part.bytes += lines.len() as u64;
            Ok(())
        })
    }

    /// End of a window: fsync the part file, rotate when due.
    fn flush(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            let name = self.name.clone();
            let flush_err = |source| SinkError::Flush {
                sink: name.clone(),
                source,
            };
            let due = match &mut self.part {
                None => false,
                Some(part) => {
                    let synced = match part.file.flush().await {
                        Ok(()) => part.file.sync_data().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = synced {
                        part.rewind().await;
                        return Err(flush_err(e));
                    }
                    part.synced = part.bytes;
                    part.bytes >= self.settings.rotate_bytes
                        || part.opened.elapsed().unwrap_or_default() >= self.settings.rotate_after
                }
            };
            if due {
                self.finish_part().await.map_err(flush_err)?;
            }
            Ok(())
        })
    }

    fn close(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            let name = self.name.clone();
            self.finish_part()
                .await
                .map_err(|source| SinkError::Flush { sink: name, source })
        })
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> DirSettings {
        DirSettings {
            dir: dir.to_path_buf(),
            rotate_bytes: 100,
            rotate_after: Duration::from_secs(3600),
            retention: DirSettings::DEFAULT_RETENTION,
            retention_bytes: None,
            text: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowlog-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn stamps_are_utc_and_sortable() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_204_233);
        assert_eq!(stamp(t), "flows-20261202T093713Z");
        assert_eq!(stamp(UNIX_EPOCH), "flows-19700101T000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(stamp(leap), "flows-20000229T000000Z");
    }

    #[tokio::test]
    async fn rotates_by_size_at_window_ends_and_finishes_on_close() {
        let dir = scratch("rotate");
        let mut s = DirSink::open("archive", settings(&dir)).await.unwrap();
        let line = [b'x'; 59];
        let mut line = line.to_vec();
        line.push(b'\n'); // 60 bytes
        s.write_batch(&line).await.unwrap();
        s.flush().await.unwrap(); // 60 < 100: stays a part file
        let n = names(&dir);
        assert_eq!(n.len(), 1);
        assert!(n[0].ends_with(".json.part"), "{n:?}");
        s.write_batch(&line).await.unwrap();
        s.flush().await.unwrap(); // 120 >= 100: rotated
        let n = names(&dir);
        assert_eq!(n.len(), 1);
        assert!(
            n[0].starts_with("flows-") && n[0].ends_with(".json"),
            "{n:?}"
        );
        assert_eq!(std::fs::read(dir.join(&n[0])).unwrap().len(), 120);
        s.write_batch(&line).await.unwrap();
        s.close().await.unwrap();
        let n = names(&dir);
        assert_eq!(n.len(), 2, "{n:?}");
        assert!(n.iter().all(|f| f.ends_with(".json")), "{n:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_part_file_left_by_a_crash_is_cut_after_its_last_line_and_finished() {
        let dir = scratch("recover");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("flows-20261201T000000Z.json.part"),
            b"{\"a\":1}\n{\"a\":2}\n{\"a\"",
        )
        .unwrap();
        let _s = DirSink::open("archive", settings(&dir)).await.unwrap();
        assert_eq!(names(&dir), ["flows-20261201T000000Z.json"]);
        assert_eq!(
            std::fs::read(dir.join("flows-20261201T000000Z.json")).unwrap(),
            b"{\"a\":1}\n{\"a\":2}\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn retention_by_age_and_by_total_size() {
        let dir = scratch("retention");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, age_days) in [
            ("flows-20261101T000000Z.json", 30u64),
            ("flows-20261128T000000Z.json", 3),
            ("flows-20261129T000000Z.json", 2),
            ("flows-20261130T000000Z.json", 1),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, vec![b'\n'; 100]).unwrap();
            let t = SystemTime::now() - Duration::from_secs(age_days * 86_400);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::write(dir.join("notes.txt"), b"not ours").unwrap();
        let mut st = settings(&dir);
        st.retention_bytes = Some(250);
        let _s = DirSink::open("archive", st).await.unwrap();
        // The 30-day-old file goes by age; of the rest (300 bytes), the oldest goes by
        // size; files that are not ours stay.
        assert_eq!(
            names(&dir),
            [
                "flows-20261129T000000Z.json",
                "flows-20261130T000000Z.json",
                "notes.txt"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
