//! The tick journal: what flow logs whose window spans several capture ticks have
//! accumulated, kept on disk so that a crash of the agent loses none of it.
//!
//! The kernel counts one capture tick at a time (see [`super::schedule`]). A flow log
//! whose window is longer than the tick (`10m` next to a `1m` one) accumulates the
//! drained ticks in the agent until its boundary; pinned maps carry the kernel's
//! counts over a crash, but not those accumulated ticks. So every drain that
//! accumulates appends the drained streams (and skip counters) to
//! `<state-dir>/ticks.journal` and fsyncs it **before** the kernel's generation is
//! cleared: at any instant each counted packet is in the kernel, in the journal, or
//! in records already written.
//!
//! ```text
//! TICK block  "FLT1" | counter u32 | mono_to_unix i64 | n u32 | n x (name_len u16, name, start_ns u64, window_ns u64)
//!             | entries: 1, FlowKey (48 bytes), FlowStats (40) | 2, ifindex u32, SkipStats (32) | 0
//!             | crc32 u32 (of everything before it in the block)
//! DONE block  "FLD1" | n u32 | n x (name_len u16, name, start_ns u64) | crc32 u32
//! ```
//!
//! A TICK block names the flow logs that accumulate the tick (their window start and
//! length) and holds every stream of an interface one of them covers; the flow logs'
//! own filters apply again when it is replayed. A DONE block says that windows were
//! rendered and written. Little-endian, the kernel ABI's `#[repr(C)]` layouts as they
//! are. The file is emptied after a drain that leaves nothing accumulated (every
//! window boundary shared by all flow logs, and every stop).
//!
//! At start the agent reads the journal ([`Journal::open`]): complete blocks whose
//! checksum holds, up to the first that does not (a crash in the middle of an append:
//! that tick was not cleared from the kernel either, and the adopted maps still hold
//! it), which is cut off. [`Restored::window_of`] gives each flow log the window start
//! its unfinished window had and [`Restored::ticks_of`] the ticks to feed it again.
//! The previous agent's last drained tick may be in the journal **and** still in the
//! kernel (it died between the append and the clear): [`Restored::has_tick`] tells
//! the catch-up drain not to add it twice.
use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{self, BufWriter, Read as _, Seek as _, SeekFrom, Write as _},
    mem::size_of,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use flowlog_common::{FlowKey, FlowStats, SkipStats};
use thiserror::Error;

/// The journal's file in the state directory.
pub const FILE: &str = "ticks.journal";

const TICK: &[u8; 4] = b"FLT1";
const DONE: &[u8; 4] = b"FLD1";
const ENTRY_END: u8 = 0;
const ENTRY_STREAM: u8 = 1;
const ENTRY_SKIP: u8 = 2;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("tick journal {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A flow log accumulating a tick: its name, window start (unix ns) and length (ns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accumulating {
    pub name: String,
    pub start_ns: u64,
    pub window_ns: u64,
}

/// One journaled tick.
#[derive(Debug, Default)]
pub struct Tick {
    /// The kernel's window counter of the drained generation.
    pub counter: u32,
    /// `unix_ns - monotonic_ns` when it was written: the streams' times are the
    /// kernel's monotonic ns, which a reboot restarts ([`Tick::times_now`]).
    pub mono_to_unix: i64,
    pub accumulating: Vec<Accumulating>,
    pub streams: Vec<(FlowKey, FlowStats)>,
    pub skips: Vec<(u32, SkipStats)>,
}

impl Tick {
    /// `stats` with its times moved to the monotonic clock whose offset to unix time
    /// is now `mono_to_unix` (unchanged within one boot).
    pub fn times_now(&self, stats: &FlowStats, mono_to_unix: i64) -> FlowStats {
        let shift = |t: u64| {
            let unix = i128::from(t) + i128::from(self.mono_to_unix);
            (unix - i128::from(mono_to_unix)).clamp(0, i128::from(u64::MAX)) as u64
        };
        FlowStats {
            first_ns: shift(stats.first_ns),
            last_ns: shift(stats.last_ns),
            ..*stats
        }
    }
}

/// What a previous agent left in the journal.
#[derive(Debug, Default)]
pub struct Restored {
    pub ticks: Vec<Tick>,
    /// Windows rendered and written: (flow log, window start).
    pub done: HashSet<(String, u64)>,
    /// Bytes cut off the end (an incomplete or damaged block).
    pub cut_bytes: u64,
}

impl Restored {
    /// The start of `name`'s unfinished window (of length `window_ns`), if ticks of it
    /// were journaled: the latest window start journaled for it and not done.
    pub fn window_of(&self, name: &str, window_ns: u64) -> Option<u64> {
        self.ticks
            .iter()
            .flat_map(|t| &t.accumulating)
            .filter(|a| a.name == name && a.window_ns == window_ns)
            .filter(|a| !self.done.contains(&(a.name.clone(), a.start_ns)))
            .map(|a| a.start_ns)
            .max()
    }

    /// The ticks of `name`'s window that started at `start_ns`, in order.
    pub fn ticks_of<'a>(&'a self, name: &'a str, start_ns: u64) -> impl Iterator<Item = &'a Tick> {
        self.ticks.iter().filter(move |t| {
            t.accumulating
                .iter()
                .any(|a| a.name == name && a.start_ns == start_ns)
        })
    }

    /// Whether `name`'s window that started at `start_ns` holds the tick `counter`.
    pub fn has_tick(&self, name: &str, start_ns: u64, counter: u32) -> bool {
        self.ticks_of(name, start_ns).any(|t| t.counter == counter)
    }

    /// Flow logs named in the journal whose window is unfinished.
    pub fn unfinished(&self) -> HashMap<&str, u64> {
        let mut out = HashMap::new();
        for a in self.ticks.iter().flat_map(|t| &t.accumulating) {
            if !self.done.contains(&(a.name.clone(), a.start_ns)) {
                out.insert(a.name.as_str(), a.window_ns);
            }
        }
        out
    }
}

/// The journal file, open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes of whole blocks.
    len: u64,
}

impl Journal {
    /// Opens (creates) the journal in `dir` and reads what it holds; cuts off an
    /// incomplete or damaged tail.
    pub fn open(dir: &Path) -> Result<(Journal, Restored), JournalError> {
        let path = dir.join(FILE);
        let err = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        // Flow data: readable by the agent's user only, like the records it becomes.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(err)?;
        let (restored, len) = parse(&bytes);
        let mut restored = restored;
        restored.cut_bytes = bytes.len() as u64 - len;
        if restored.cut_bytes > 0 {
            file.set_len(len).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        file.seek(SeekFrom::Start(len)).map_err(err)?;
        Ok((Journal { path, file, len }, restored))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the journal holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of whole blocks.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Starts a TICK block for the generation with window counter `counter`,
    /// accumulated by `accumulating`; the kernel's times are monotonic ns,
    /// `mono_to_unix` away from unix time.
    pub fn tick(
        &mut self,
        counter: u32,
        mono_to_unix: i64,
        accumulating: &[Accumulating],
    ) -> TickWriter<'_> {
        let mut w = TickWriter {
            start: self.len,
            out: Some(BufWriter::with_capacity(1 << 16, &self.file)),
            crc: crc32fast::Hasher::new(),
            error: None,
            journal_len: &mut self.len,
            path: &self.path,
        };
        w.put(TICK);
        w.put(&counter.to_le_bytes());
        w.put(&mono_to_unix.to_le_bytes());
        w.put(&(accumulating.len() as u32).to_le_bytes());
        for a in accumulating {
            w.name(&a.name);
            w.put(&a.start_ns.to_le_bytes());
            w.put(&a.window_ns.to_le_bytes());
        }
        w
    }

    /// Appends a DONE block for windows rendered and written, and syncs it.
    pub fn done(&mut self, windows: &[(String, u64)]) -> Result<(), JournalError> {
        if windows.is_empty() || self.len == 0 {
            return Ok(());
        }
        let mut w = TickWriter {
            start: self.len,
            out: Some(BufWriter::new(&self.file)),
            crc: crc32fast::Hasher::new(),
            error: None,
            journal_len: &mut self.len,
            path: &self.path,
        };
        w.put(DONE);
        w.put(&(windows.len() as u32).to_le_bytes());
        for (name, start) in windows {
            w.name(name);
            w.put(&start.to_le_bytes());
        }
        w.seal()
    }

    /// Empties the journal (nothing is accumulated any more).
    pub fn clear(&mut self) -> Result<(), JournalError> {
        if self.len == 0 {
            return Ok(());
        }
        let err = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(err)?;
        self.file.seek(SeekFrom::Start(0)).map_err(err)?;
        self.file.sync_data().map_err(err)?;
        self.len = 0;
        Ok(())
    }
}

/// One block being appended; [`TickWriter::seal`] completes and syncs it. A block
/// that fails (or is dropped unsealed) is cut off again, so the file always ends with
/// a whole block.
pub struct TickWriter<'j> {
    start: u64,
    /// `None` once sealed or cut.
    out: Option<BufWriter<&'j File>>,
    crc: crc32fast::Hasher,
    error: Option<io::Error>,
    journal_len: &'j mut u64,
    path: &'j Path,
}

impl TickWriter<'_> {
    fn put(&mut self, b: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.crc.update(b);
        if let Some(Err(e)) = self.out.as_mut().map(|o| o.write_all(b)) {
            self.error = Some(e);
        }
    }

    fn name(&mut self, name: &str) {
        let n = name.len().min(u16::MAX as usize);
        self.put(&(n as u16).to_le_bytes());
        self.put(&name.as_bytes()[..n]);
    }

    pub fn stream(&mut self, key: &FlowKey, stats: &FlowStats) {
        self.put(&[ENTRY_STREAM]);
        self.put(pod_bytes(key));
        self.put(pod_bytes(stats));
    }

    pub fn skip(&mut self, ifindex: u32, s: &SkipStats) {
        self.put(&[ENTRY_SKIP]);
        self.put(&ifindex.to_le_bytes());
        self.put(pod_bytes(s));
    }

    /// Ends the block, writes its checksum and syncs the file.
    pub fn seal(mut self) -> Result<(), JournalError> {
        // A TICK block's entries end with a 0; so does a DONE block's list.
        self.put(&[ENTRY_END]);
        let crc = self.crc.clone().finalize().to_le_bytes();
        if self.error.is_none() {
            if let Some(Err(e)) = self.out.as_mut().map(|o| o.write_all(&crc)) {
                self.error = Some(e);
            }
        }
        let result = match (self.error.take(), self.out.take()) {
            (None, Some(mut out)) => out
                .flush()
                .and_then(|()| out.get_ref().sync_data())
                .and_then(|()| out.get_mut().stream_position()),
            (Some(e), out) => {
                self.out = out;
                Err(e)
            }
            (None, None) => Err(io::Error::other("block already sealed")),
        };
        match result {
            Ok(pos) => {
                *self.journal_len = pos;
                Ok(())
            }
            Err(source) => {
                self.cut();
                Err(JournalError::Io {
                    path: self.path.to_path_buf(),
                    source,
                })
            }
        }
    }

    /// Throws the unsealed block away: its buffered bytes unwritten, what reached the
    /// file cut off.
    fn cut(&mut self) {
        if let Some(out) = self.out.take() {
            let (mut file, _unwritten) = out.into_parts();
            let _ = file.set_len(self.start);
            let _ = file.seek(SeekFrom::Start(self.start));
        }
    }
}

impl Drop for TickWriter<'_> {
    fn drop(&mut self) {
        self.cut();
    }
}

fn pod_bytes<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `T` is a `#[repr(C)]` plain-old-data type of the kernel ABI (explicit
    // padding, every byte initialised).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn read_pod<T: aya::Pod>(b: &[u8]) -> T {
    assert!(b.len() >= size_of::<T>());
    // SAFETY: enough bytes; every bit pattern is a valid `T` (`aya::Pod`).
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
}

/// A cursor over a block.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn name(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

enum Block {
    Tick(Tick),
    Done(Vec<(String, u64)>),
}

/// The whole blocks of a journal, and their length in bytes.
fn parse(bytes: &[u8]) -> (Restored, u64) {
    let mut restored = Restored::default();
    let mut at = 0;
    while at < bytes.len() {
        let mut c = Cursor { b: bytes, at };
        let Some(block) = parse_block(&mut c) else {
            break;
        };
        let Some(crc) = c.u32() else {
            break;
        };
        if crc32fast::hash(&bytes[at..c.at - 4]) != crc {
            break;
        }
        at = c.at;
        match block {
            Block::Tick(t) => restored.ticks.push(t),
            Block::Done(d) => restored.done.extend(d),
        }
    }
    (restored, at as u64)
}

fn parse_block(c: &mut Cursor<'_>) -> Option<Block> {
    let magic = c.take(4)?;
    if magic == DONE {
        let n = c.u32()?;
        let mut done = Vec::new();
        for _ in 0..n {
            done.push((c.name()?, c.u64()?));
        }
        return (c.u8()? == ENTRY_END).then_some(Block::Done(done));
    }
    if magic != TICK {
        return None;
    }
    let mut t = Tick {
        counter: c.u32()?,
        mono_to_unix: c.u64()? as i64,
        ..Default::default()
    };
    let n = c.u32()?;
    for _ in 0..n {
        t.accumulating.push(Accumulating {
            name: c.name()?,
            start_ns: c.u64()?,
            window_ns: c.u64()?,
        });
    }
    loop {
        match c.u8()? {
            ENTRY_END => return Some(Block::Tick(t)),
            ENTRY_STREAM => {
                let key = read_pod::<FlowKey>(c.take(size_of::<FlowKey>())?);
                let stats = read_pod::<FlowStats>(c.take(size_of::<FlowStats>())?);
                t.streams.push((key, stats));
            }
            ENTRY_SKIP => {
                let ifindex = c.u32()?;
                t.skips.push((
                    ifindex,
                    read_pod::<SkipStats>(c.take(size_of::<SkipStats>())?),
                ));
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            ifindex: 3,
            src_port: port,
            dst_port: 53,
            protocol: 17,
            ..Default::default()
        }
    }

    fn stats(packets: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 64,
            first_ns: 5,
            last_ns: 9,
            ..Default::default()
        }
    }

    fn acc(name: &str, start_ns: u64) -> Accumulating {
        Accumulating {
            name: name.into(),
            start_ns,
            window_ns: 600,
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flowlog-journal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn ticks_and_done_blocks_round_trip_and_a_torn_tail_is_cut() {
        let d = dir("rt");
        {
            let (mut j, r) = Journal::open(&d).unwrap();
            assert!(r.ticks.is_empty() && j.is_empty());
            let mut w = j.tick(7, 0, &[acc("slow", 100), acc("mid", 100)]);
            w.stream(&key(1), &stats(3));
            w.stream(&key(2), &stats(4));
            w.skip(
                3,
                &SkipStats {
                    streams: 1,
                    packets: 2,
                    bytes: 3,
                    uncounted_stream_packets: 0,
                },
            );
            w.seal().unwrap();
            j.done(&[("mid".into(), 100)]).unwrap();
            let mut w = j.tick(8, 0, &[acc("slow", 100), acc("mid", 300)]);
            w.stream(&key(1), &stats(5));
            w.seal().unwrap();
            // A crash in the middle of the next append: half a block.
            let mut w = j.tick(9, 0, &[acc("slow", 100)]);
            w.stream(&key(1), &stats(6));
            w.out.as_mut().unwrap().flush().unwrap();
            std::mem::forget(w);
        }
        let (j, r) = Journal::open(&d).unwrap();
        assert!(r.cut_bytes > 0);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(j.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(r.ticks.len(), 2);
        assert_eq!(r.ticks[0].counter, 7);
        assert_eq!(
            r.ticks[0].streams,
            vec![(key(1), stats(3)), (key(2), stats(4))]
        );
        assert_eq!(r.ticks[0].skips[0].1.bytes, 3);
        // Written when unix = mono + 1000, read after a reboot: unix = mono + 5000.
        let t = Tick {
            mono_to_unix: 1000,
            ..Default::default()
        };
        let moved = t.times_now(&stats(1), 5000);
        assert_eq!((moved.first_ns, moved.last_ns, moved.packets), (0, 0, 1));
        let moved = t.times_now(
            &FlowStats {
                first_ns: 4500,
                last_ns: 4600,
                ..stats(1)
            },
            500,
        );
        assert_eq!((moved.first_ns, moved.last_ns), (5000, 5100));
        assert_eq!(r.window_of("slow", 600), Some(100));
        assert_eq!(r.window_of("slow", 60), None, "another window length");
        // mid's window at 100 was done; its next one started at 300.
        assert_eq!(r.window_of("mid", 600), Some(300));
        assert_eq!(r.ticks_of("slow", 100).count(), 2);
        assert_eq!(
            r.ticks_of("mid", 300)
                .map(|t| t.counter)
                .collect::<Vec<_>>(),
            vec![8]
        );
        assert!(r.has_tick("slow", 100, 8) && !r.has_tick("slow", 100, 9));
        assert_eq!(r.unfinished().len(), 2);
        // The torn block is gone from the file; a reopen finds the same.
        let len = std::fs::metadata(j.path()).unwrap().len();
        drop(j);
        let (mut j, r2) = Journal::open(&d).unwrap();
        assert_eq!((r2.cut_bytes, r2.ticks.len()), (0, 2));
        assert_eq!(std::fs::metadata(j.path()).unwrap().len(), len);
        j.clear().unwrap();
        assert!(j.is_empty());
        let (_, r3) = Journal::open(&d).unwrap();
        assert!(r3.ticks.is_empty() && r3.done.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_block_ends_the_journal() {
        let d = dir("crc");
        {
            let (mut j, _) = Journal::open(&d).unwrap();
            for c in 0..3 {
                let mut w = j.tick(c, 0, &[acc("slow", 100)]);
                w.stream(&key(c as u16), &stats(1));
                w.seal().unwrap();
            }
        }
        let path = d.join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let block = bytes.len() / 3;
        bytes[block + 30] ^= 0xff; // inside the second block
        std::fs::write(&path, &bytes).unwrap();
        let (_, r) = Journal::open(&d).unwrap();
        assert_eq!(r.ticks.len(), 1);
        assert_eq!(r.cut_bytes as usize, bytes.len() - block);
        let _ = std::fs::remove_dir_all(&d);
    }
}
