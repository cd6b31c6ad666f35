//! The traffic source: an `AF_PACKET` socket in the sender namespace that pushes
//! pre-built frames with `sendmmsg` (qdisc bypassed), cycling through a [`FlowSet`].
//! On veth, the sending CPU also runs the receiver's whole path (backlog, TC ingress,
//! IP, UDP) in its softirq, so packets per second at the receiver measure that path.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{packet::FlowSet, sys};

const BATCH: usize = 256;

pub struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    tid: i32,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Sender {
    /// Starts sending on `ifname` in `ns`, pinned to `cpu`, until [`Sender::finish`]
    /// or `limit` elapses.
    pub fn start(
        ns: &str,
        ifname: &str,
        flows: Arc<FlowSet>,
        cpu: Option<usize>,
        limit: Duration,
    ) -> Result<Sender> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (ns, ifname) = (ns.to_owned(), ifname.to_owned());
        let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&sent));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let tid = Arc::new(AtomicI32::new(0));
        let tid2 = Arc::clone(&tid);
        let handle = thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid2.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let setup = (|| {
                sys::enter_netns(&ns)?;
                if let Some(cpu) = cpu {
                    sys::pin_thread(cpu)?;
                }
                open_socket(&ifname)
            })();
            let sock = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    bail!("sender setup: {msg}");
                }
            };
            send_loop(&sock, &flows, &stop2, &sent2, Instant::now() + limit)
        });
        ready_rx
            .recv()
            .map_err(|_| anyhow!("sender thread died during setup"))??;
        Ok(Sender {
            stop,
            sent,
            tid: tid.load(Ordering::SeqCst),
            handle: Some(handle),
        })
    }

    /// CPU time the sending thread has used so far (ns). Without IRQ time
    /// accounting this includes the receive path it runs in softirq context.
    pub fn cpu_ns(&self) -> Result<u64> {
        sys::task_runtime_ns(&format!("/proc/self/task/{}", self.tid))
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the sender; returns how many frames it sent.
    pub fn finish(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().map_err(|_| anyhow!("sender panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn open_socket(ifname: &str) -> Result<(OwnedFd, libc::sockaddr_ll)> {
    let cname = std::ffi::CString::new(ifname)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error()).context(format!("no interface {ifname}"));
    }
    // Protocol 0: the socket receives nothing.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: a new fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid option pointer and length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    Ok((sock, addr))
}

fn send_loop(
    (sock, addr): &(OwnedFd, libc::sockaddr_ll),
    flows: &FlowSet,
    stop: &AtomicBool,
    sent: &AtomicU64,
    deadline: Instant,
) -> Result<()> {
    let fd = sock.as_raw_fd();
    let len = flows.frame_len;
    // SAFETY (for the zeroed structs): all-zero iovec/mmsghdr are valid; every field
    // used by the kernel is set before each call.
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut next = 0usize;
    let mut batches = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) || sys::STOP.load(Ordering::Relaxed) {
            return Ok(());
        }
        batches = batches.wrapping_add(1);
        if batches.is_multiple_of(64) && Instant::now() > deadline {
            return Ok(());
        }
        for i in 0..BATCH {
            let idx = (next + i) % flows.count;
            iov[i].iov_base = flows.frames[idx * len..].as_ptr() as *mut libc::c_void;
            iov[i].iov_len = len;
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = addr as *const libc::sockaddr_ll as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds BATCH initialised headers pointing into live buffers.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    thread::yield_now();
                    continue;
                }
                _ => return Err(e).context("sendmmsg"),
            }
        }
        next = (next + n as usize) % flows.count;
        sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}
