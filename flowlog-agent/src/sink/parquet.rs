//! The `parquet` sink: a Hive-style partitioned tree of Parquet files.
//!
//! ```text
//! DIR/dt=2026-12-02/hour=09/flows-20261202T093800Z.parquet     finished files
//! DIR/dt=2026-12-02/hour=09/.flows-20261202T093900Z.parquet.part   being written
//! ```
//!
//! * One file per `windows_per_file` windows (default 1), one row group per window
//!   (collected in memory, column by column, and written at the window's end),
//!   columns as in [`super::parquet_schema`], zstd-compressed, written by the Apache
//!   Arrow project's `parquet` crate.
//! * The partition (`dt`, `hour`, UTC) and the name come from the start of the file's
//!   first window (the smallest `start` among its records: NODATA records carry the
//!   window start, streams start within it; windows are aligned to wall-clock
//!   multiples, so a window never straddles an hour of a 1/5/10-minute grid).
//! * Atomic: the file is written under a hidden `.part` name (skipped by Parquet
//!   readers, and by `flowlog query`, which reads `*.parquet`), closed (footer),
//!   fsync'd, renamed, and the directory fsync'd. A crash leaves at most the hidden
//!   file of the unfinished windows, deleted at the next start (a Parquet file
//!   without its footer cannot be read): with `windows_per_file = N` a crash loses
//!   up to N windows of this sink, so keep N small where that matters.
//! * Retention by age of finished files, at start-up and after each file; empty
//!   partition directories go too.
use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parquet::{
    basic::{Compression, ZstdLevel},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::TypePtr,
};
use tracing::info;

use super::{
    parquet_schema::{write_row_group, ParquetColumns, Rows},
    Sink, SinkError, SinkFuture,
};

/// Settings of a `parquet` sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetSettings {
    pub dir: PathBuf,
    /// Windows per file.
    pub windows_per_file: u32,
    /// Delete finished files older than this.
    pub retention: Duration,
    /// Then delete the oldest finished files while they hold more bytes than this.
    pub retention_bytes: Option<u64>,
}

impl ParquetSettings {
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
}

struct OpenFile {
    writer: SerializedFileWriter<fs::File>,
    part: PathBuf,
    target: PathBuf,
    /// Windows (row groups) written.
    windows: u32,
}

/// The partitioned Parquet sink.
pub struct ParquetSink {
    name: String,
    settings: ParquetSettings,
    columns: ParquetColumns,
    schema: TypePtr,
    /// The current window's records, column by column (written at its end).
    rows: Rows,
    file: Option<OpenFile>,
}

fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
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
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `dt=YYYY-MM-DD/hour=HH` and `flows-YYYYMMDDTHHMMSSZ` of unix second `secs` (UTC).
pub fn partition_and_stem(secs: i64) -> (String, String) {
    let (y, m, d, h, mi, s) = civil(secs);
    (
        format!("dt={y:04}-{m:02}-{d:02}/hour={h:02}"),
        format!("flows-{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z"),
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn to_io(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl ParquetSink {
    /// Creates the directory (mode 0750), deletes hidden part files of an earlier
    /// run, applies retention.
    pub async fn open(
        name: &str,
        settings: ParquetSettings,
        columns: ParquetColumns,
    ) -> Result<ParquetSink, SinkError> {
        let dir = settings.dir.clone();
        let n = name.to_string();
        let (retention, retention_bytes) = (settings.retention, settings.retention_bytes);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::os::unix::fs::DirBuilderExt as _;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&dir)?;
            walk(&dir, &mut |p| {
                let hidden_part = p
                    .file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with(".flows-") && f.ends_with(".part"));
                if hidden_part {
                    fs::remove_file(p)?;
                    info!(sink = %n, file = %p.display(), "deleted an unfinished Parquet file of an earlier run (no footer: unreadable)");
                }
                Ok(())
            })?;
            prune(&n, &dir, retention, retention_bytes)
        })
        .await
        .map_err(to_io)
        .and_then(|r| r)
        .map_err(|source| SinkError::Open {
            path: settings.dir.clone(),
            source,
        })?;
        let schema = columns.schema().map_err(|e| SinkError::Open {
            path: settings.dir.clone(),
            source: to_io(e),
        })?;
        Ok(ParquetSink {
            name: name.to_string(),
            rows: columns.empty(),
            settings,
            columns,
            schema,
            file: None,
        })
    }

    fn err(&self, source: io::Error) -> SinkError {
        SinkError::Write {
            sink: self.name.clone(),
            source,
        }
    }

    /// Closes the open file (footer), fsyncs, renames it into place.
    async fn finish(&mut self) -> Result<(), SinkError> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        let name = self.name.clone();
        let dir = self.settings.dir.clone();
        let (retention, retention_bytes) = (self.settings.retention, self.settings.retention_bytes);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let file = f.writer.into_inner().map_err(to_io)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&f.part, &f.target)?;
            if let Some(parent) = f.target.parent() {
                fs::File::open(parent)?.sync_all()?;
            }
            prune(&name, &dir, retention, retention_bytes)
        })
        .await
        .map_err(to_io)
        .and_then(|r| r)
        .map_err(|source| SinkError::Flush {
            sink: self.name.clone(),
            source,
        })
    }
}

/// Calls `f` on every file under `dir` (recursively).
fn walk(dir: &Path, f: &mut dyn FnMut(&Path) -> io::Result<()>) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            walk(&p, f)?;
        } else {
            f(&p)?;
        }
    }
    Ok(())
}

/// Deletes finished files older than `retention`, then the oldest while the rest hold
/// more than `retention_bytes`, then empty partition directories.
fn prune(
    name: &str,
    dir: &Path,
    retention: Duration,
    retention_bytes: Option<u64>,
) -> io::Result<()> {
    let now = SystemTime::now();
    let mut kept = Vec::new();
    walk(dir, &mut |p| {
        let ours = p
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("flows-") && f.ends_with(".parquet"));
        if ours {
            let meta = fs::metadata(p)?;
            let age = now.duration_since(meta.modified()?).unwrap_or_default();
            if age > retention {
                fs::remove_file(p)?;
                info!(sink = %name, file = %p.display(), "retention: deleted (age)");
            } else {
                kept.push((p.to_path_buf(), meta.len()));
            }
        }
        Ok(())
    })?;
    if let Some(limit) = retention_bytes {
        // `dt=YYYY-MM-DD/hour=HH/flows-<UTC start>...`: paths sort oldest first.
        kept.sort();
        let mut total: u64 = kept.iter().map(|(_, size)| size).sum();
        for (path, size) in kept {
            if total <= limit {
                break;
            }
            fs::remove_file(&path)?;
            total -= size;
            info!(sink = %name, file = %path.display(), "retention: deleted (total size)");
        }
    }
    // dt=*/hour=* directories left empty.
    for day in fs::read_dir(dir)? {
        let day = day?.path();
        if !day
            .file_name()
            .and_then(|f| f.to_str())
            .is_some_and(|f| f.starts_with("dt="))
            || !day.is_dir()
        {
            continue;
        }
        for hour in fs::read_dir(&day)? {
            let hour = hour?.path();
            if hour.is_dir() && fs::read_dir(&hour)?.next().is_none() {
                let _ = fs::remove_dir(&hour);
            }
        }
        if fs::read_dir(&day)?.next().is_none() {
            let _ = fs::remove_dir(&day);
        }
    }
    Ok(())
}

/// Creates the partition directory and the hidden part file of a new file.
fn create(dir: &Path, stem: &str, schema: TypePtr) -> io::Result<OpenFile> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let mut target = dir.join(format!("{stem}.parquet"));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{stem}-{n}.parquet"));
        n += 1;
    }
    let part = dir.join(format!(
        ".{}.part",
        target.file_name().and_then(|f| f.to_str()).unwrap_or("x")
    ));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o640)
        .open(&part)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(to_io)?))
        .set_created_by(concat!("flowlog ", env!("CARGO_PKG_VERSION")).into())
        .build();
    let writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(to_io)?;
    Ok(OpenFile {
        writer,
        part,
        target,
        windows: 0,
    })
}

impl Sink for ParquetSink {
    /// Collects the records (columns in memory); they are written at the window's end.
    fn write_batch<'a>(&'a mut self, lines: &'a [u8]) -> SinkFuture<'a> {
        Box::pin(async move {
            self.columns.append(&mut self.rows, lines);
            Ok(())
        })
    }

    /// End of a window: its records become a row group; the file is finished after
    /// `windows_per_file` windows.
    fn flush(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            if self.rows.len == 0 {
                return Ok(());
            }
            let rows = std::mem::replace(&mut self.rows, self.columns.empty());
            let file = self.file.take();
            let settings_dir = self.settings.dir.clone();
            let schema = self.schema.clone();
            let res = tokio::task::spawn_blocking(move || -> (Option<OpenFile>, io::Result<()>) {
                let mut f = match file {
                    Some(f) => f,
                    None => {
                        let start = rows.min_start.unwrap_or_else(unix_now);
                        let (partition, stem) = partition_and_stem(start);
                        match create(&settings_dir.join(partition), &stem, schema) {
                            Ok(f) => f,
                            Err(e) => return (None, Err(e)),
                        }
                    }
                };
                let r = write_row_group(&mut f.writer, &rows).map_err(to_io);
                if r.is_ok() {
                    f.windows += 1;
                }
                (Some(f), r)
            })
            .await;
            let (file, r) = res.map_err(|e| self.err(to_io(e)))?;
            self.file = file;
            r.map_err(|source| SinkError::Flush {
                sink: self.name.clone(),
                source,
            })?;
            if self
                .file
                .as_ref()
                .is_some_and(|f| f.windows >= self.settings.windows_per_file)
            {
                self.finish().await?;
            }
            Ok(())
        })
    }

    fn close(&mut self) -> SinkFuture<'_> {
        Box::pin(async move {
            self.flush().await?;
            self.finish().await
        })
    }

    fn describe(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_dates_and_hours() {
        assert_eq!(
            partition_and_stem(1_796_204_233),
            (
                "dt=2026-12-02/hour=09".to_string(),
                "flows-20261202T093713Z".to_string()
            )
        );
        assert_eq!(partition_and_stem(0).0, "dt=1970-01-01/hour=00");
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowlog-pq-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v = Vec::new();
        walk(dir, &mut |p| {
            v.push(p.strip_prefix(dir).unwrap().display().to_string());
            Ok(())
        })
        .unwrap();
        v.sort();
        v
    }

    fn line(start: u64, packets: u64) -> String {
        format!("{{\"version\":\"1\",\"srcaddr\":\"10.0.0.1\",\"packets\":\"{packets}\",\"bytes\":\"{}\",\"start\":\"{start}\",\"log-status\":\"OK\"}}\n", packets * 100)
    }

    #[test]
    fn size_retention_deletes_the_oldest_files_first() {
        let dir = scratch("size");
        let put = |rel: &str, size: usize| {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, vec![0u8; size]).unwrap();
        };
        put("dt=2026-11-30/hour=23/flows-20261130T230000Z.parquet", 100);
        put("dt=2026-12-01/hour=00/flows-20261201T000000Z.parquet", 200);
        put("dt=2026-12-01/hour=09/flows-20261201T090000Z.parquet", 150);
        put("dt=2026-12-01/hour=10/flows-20261201T100000Z.parquet", 300);
        // Not a finished file of ours: never counted or deleted.
        put(
            "dt=2026-12-01/hour=10/.flows-20261201T101000Z.parquet.part",
            5000,
        );
        // 750 bytes: dropping the oldest two (300) leaves 450, within the bound.
        prune("pq", &dir, ParquetSettings::DEFAULT_RETENTION, Some(450)).unwrap();
        assert_eq!(
            files(&dir),
            [
                "dt=2026-12-01/hour=09/flows-20261201T090000Z.parquet",
                "dt=2026-12-01/hour=10/.flows-20261201T101000Z.parquet.part",
                "dt=2026-12-01/hour=10/flows-20261201T100000Z.parquet",
            ]
        );
        // The emptied partitions are gone.
        assert!(!dir.join("dt=2026-11-30").exists());
        assert!(!dir.join("dt=2026-12-01/hour=00").exists());
        // No bound: nothing more goes.
        prune("pq", &dir, ParquetSettings::DEFAULT_RETENTION, None).unwrap();
        assert_eq!(files(&dir).len(), 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn one_file_per_n_windows_atomically_and_readable() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = scratch("files");
        fs::create_dir_all(dir.join("dt=2026-12-01/hour=00")).unwrap();
        fs::write(
            dir.join("dt=2026-12-01/hour=00/.flows-20261201T000000Z.parquet.part"),
            b"PAR1 half",
        )
        .unwrap();
        let settings = ParquetSettings {
            dir: dir.clone(),
            windows_per_file: 2,
            retention: ParquetSettings::DEFAULT_RETENTION,
            retention_bytes: None,
        };
        let mut s = ParquetSink::open("pq", settings, ParquetColumns::new(false, None))
            .await
            .unwrap();
        // The crash leftover went, and its empty partition.
        assert!(files(&dir).is_empty(), "{:?}", files(&dir));
        s.write_batch(line(1_796_204_233, 3).as_bytes())
            .await
            .unwrap();
        s.write_batch(line(1_796_204_240, 4).as_bytes())
            .await
            .unwrap();
        s.flush().await.unwrap();
        // One window of two: only the hidden part file.
        assert_eq!(
            files(&dir),
            ["dt=2026-12-02/hour=09/.flows-20261202T093713Z.parquet.part"]
        );
        s.write_batch(line(1_796_204_293, 5).as_bytes())
            .await
            .unwrap();
        s.flush().await.unwrap();
        assert_eq!(
            files(&dir),
            ["dt=2026-12-02/hour=09/flows-20261202T093713Z.parquet"]
        );
        let r = SerializedFileReader::new(
            fs::File::open(dir.join("dt=2026-12-02/hour=09/flows-20261202T093713Z.parquet"))
                .unwrap(),
        )
        .unwrap();
        let md = r.metadata();
        assert_eq!(md.file_metadata().num_rows(), 3);
        assert_eq!(md.num_row_groups(), 2);
        // (The footer names the codec, not its level.)
        assert!(matches!(
            md.row_group(0).column(0).compression(),
            Compression::ZSTD(_)
        ));
        // A partial file is finished on close.
        s.write_batch(line(1_796_207_900, 1).as_bytes())
            .await
            .unwrap();
        s.close().await.unwrap();
        assert_eq!(
            files(&dir),
            [
                "dt=2026-12-02/hour=09/flows-20261202T093713Z.parquet",
                "dt=2026-12-02/hour=10/flows-20261202T103820Z.parquet"
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
