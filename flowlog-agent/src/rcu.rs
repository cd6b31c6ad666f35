//! Waiting for in-flight eBPF programs: an RCU grace period on demand.
//!
//! TC and XDP programs run inside an RCU read-side critical section. The kernel's
//! `bpf(BPF_MAP_UPDATE_ELEM)` on a map-in-map (`ARRAY_OF_MAPS`) calls
//! `synchronize_rcu()` before it returns ("maybe_wait_bpf_programs" in
//! kernel/bpf/syscall.c), so that userspace knows every program that could have seen
//! the old value has finished. The kernel selftests use the same call to trigger a
//! grace period. We keep a private one-slot `ARRAY_OF_MAPS` (never referenced by any
//! program) and update its slot whenever we need that guarantee.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum RcuError {
    #[error("creating the map-in-map used to wait for in-flight programs: {0}")]
    Create(#[source] io::Error),
    #[error("waiting for in-flight programs (map-in-map update): {0}")]
    Synchronize(#[source] io::Error),
}

/// `union bpf_attr` for `BPF_MAP_CREATE` (the prefix we use; the rest stays zero).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    // u32s: a u64 array here would leave 4 bytes of implicit padding after
    // `map_name`, which the kernel requires to be zero and Rust may leave unset.
    _rest: [u32; 24],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    _rest: [u64; 12],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded `bpf_attr` prefix of the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn create(map_type: u32, inner_map_fd: u32, name: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..Default::default()
    };
    attr.map_name[..name.len()].copy_from_slice(name);
    let fd = sys_bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A handle that can wait for every eBPF program currently running to finish.
#[derive(Debug)]
pub struct RcuBarrier {
    inner: OwnedFd,
    outer: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> Result<Self, RcuError> {
        let inner = create(BPF_MAP_TYPE_ARRAY, 0, b"flowlog_rcu_in").map_err(RcuError::Create)?;
        let outer = create(
            BPF_MAP_TYPE_ARRAY_OF_MAPS,
            inner.as_raw_fd() as u32,
            b"flowlog_rcu",
        )
        .map_err(RcuError::Create)?;
        Ok(Self { inner, outer })
    }

    /// Returns once every program that started before the call has completed.
    pub fn synchronize(&self) -> Result<(), RcuError> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map_err(RcuError::Synchronize)?;
        Ok(())
    }
}
