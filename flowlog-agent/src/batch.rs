//! `BPF_MAP_LOOKUP_BATCH` / `BPF_MAP_LOOKUP_AND_DELETE_BATCH` on hash maps: reads (and
//! removes) thousands of entries per system call (aya 0.14 has no batch API). Used
//! only on a map generation that no program writes any more (see `drain`), so the
//! reads and deletes are race-free.
use std::{io, os::fd::RawFd};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// What a batch call does to the entries it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchMode {
    /// Read them; the map keeps them (cleared later, off the critical path).
    Read,
    /// Read and delete them.
    ReadAndDelete,
}

/// `union bpf_attr` for the batch commands (the `batch` member, zero-padded).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
    _rest: [u64; 8],
}

/// Cursor over one hash map, handing out its entries in batches (and deleting them in
/// [`BatchMode::ReadAndDelete`]).
pub struct BatchDrain {
    fd: RawFd,
    mode: BatchMode,
    key_size: usize,
    /// Bytes of one entry's value as the syscall returns it (per-CPU maps: one
    /// 8-byte-aligned slot per possible CPU).
    value_size: usize,
    /// Kernel's opaque position (a bucket index for hash maps).
    token: u64,
    started: bool,
    done: bool,
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
}

impl BatchDrain {
    /// `fd` must stay open while the cursor is used.
    pub fn new(fd: RawFd, key_size: usize, value_size: usize, batch: usize) -> Self {
        Self {
            fd,
            mode: BatchMode::ReadAndDelete,
            key_size,
            value_size,
            token: 0,
            started: false,
            done: false,
            keys: vec![0; key_size * batch],
            values: vec![0; value_size * batch],
        }
    }

    /// Only read the entries: the map keeps them.
    pub fn read_only(mut self) -> Self {
        self.mode = BatchMode::Read;
        self
    }

    /// Fetches (and, by default, deletes) the next batch. Returns how many entries `keys` and
    /// `values` now hold; 0 once the map is empty.
    pub fn next_batch(&mut self) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        loop {
            let capacity = self.keys.len() / self.key_size;
            let mut out_token: u64 = 0;
            let mut attr = BatchAttr {
                in_batch: if self.started {
                    &self.token as *const u64 as u64
                } else {
                    0
                },
                out_batch: &mut out_token as *mut u64 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: capacity as u32,
                map_fd: self.fd as u32,
                ..Default::default()
            };
            // SAFETY: the buffers hold `count` keys and values of the map's sizes, and
            // the tokens are 8 bytes (the kernel uses 4 for hash maps).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    match self.mode {
                        BatchMode::Read => BPF_MAP_LOOKUP_BATCH,
                        BatchMode::ReadAndDelete => BPF_MAP_LOOKUP_AND_DELETE_BATCH,
                    },
                    &mut attr as *mut BatchAttr as *mut libc::c_void,
                    size_of::<BatchAttr>() as libc::c_uint,
                )
            };
            let n = attr.count as usize;
            if ret == 0 {
                self.started = true;
                self.token = out_token;
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // End of the map: `count` holds the last entries.
                Some(libc::ENOENT) => {
                    self.done = true;
                    return Ok(n);
                }
                // One bucket holds more entries than the buffer: grow and retry.
                Some(libc::ENOSPC) => {
                    let grow = capacity * 2;
                    self.keys.resize(self.key_size * grow, 0);
                    self.values.resize(self.value_size * grow, 0);
                }
                _ => return Err(err),
            }
        }
    }

    pub fn key(&self, i: usize) -> &[u8] {
        &self.keys[i * self.key_size..(i + 1) * self.key_size]
    }

    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }
}

/// Reads a plain-old-data `T` from the start of `bytes`.
///
/// # Panics
/// If `bytes` is shorter than `T`.
pub fn read_pod<T: aya::Pod>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: length checked; `T: Pod` accepts any bit pattern; unaligned read.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}
