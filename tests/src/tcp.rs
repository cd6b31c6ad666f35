//! TCP endpoints for policy tests: a client socket bound to a chosen source address
//! with a connect timeout (so a dropped SYN makes the connect fail after a known number
//! of retransmissions), and a server that accepts many connections and reports each
//! one's own counters.
//!
//! Every figure comes from the kernel's `TCP_INFO` of the socket itself (segments and
//! payload bytes actually sent, retransmissions included), so tests compare the agent's
//! records with what the sockets measured rather than with what they assume.
use std::{
    io::{self, Read, Write},
    mem,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::with_netns;

/// Counters of one TCP socket (`TCP_INFO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_state` (1 ESTABLISHED, 2 SYN_SENT, 7 CLOSE, 9 LAST_ACK...).
    pub state: u8,
    /// Segments sent: SYN (and its retransmissions), data, ACKs, FIN.
    pub segs_out: u32,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// Segments retransmitted (SYN retransmissions included).
    pub total_retrans: u32,
}

/// Offsets in the kernel's `struct tcp_info` (include/uapi/linux/tcp.h); glibc's
/// copy stops at `tcpi_total_retrans`.
const TCPI_STATE: usize = 0;
const TCPI_TOTAL_RETRANS: usize = 100;
const TCPI_SEGS_OUT: usize = 136;
const TCPI_BYTES_SENT: usize = 200;
const TCPI_BYTES_RETRANS: usize = 208;

/// `TCP_STATE` values of include/net/tcp_states.h.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_CLOSE: u8 = 7;

/// Reads `TCP_INFO` of a TCP socket.
pub fn tcp_info_fd(fd: RawFd) -> TcpInfo {
    let mut buf = [0u8; 512];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: valid socket fd, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
    assert!(
        len as usize >= TCPI_BYTES_RETRANS + 8,
        "kernel tcp_info too short ({len} bytes)"
    );
    let u32_at = |o: usize| u32::from_ne_bytes(buf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_ne_bytes(buf[o..o + 8].try_into().unwrap());
    TcpInfo {
        state: buf[TCPI_STATE],
        segs_out: u32_at(TCPI_SEGS_OUT),
        bytes_sent: u64_at(TCPI_BYTES_SENT),
        bytes_retrans: u64_at(TCPI_BYTES_RETRANS),
        total_retrans: u32_at(TCPI_TOTAL_RETRANS),
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr.ip() {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = addr.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = addr.port().to_be();
            sin6.sin6_addr.s6_addr = a.octets();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// What a client connection attempt of [`tcp_exchange_from`] did.
#[derive(Debug, Clone, Copy)]
pub struct ClientOutcome {
    /// The local address (source port chosen by the kernel).
    pub local: SocketAddr,
    /// Whether the connection was established within the timeout.
    pub connected: bool,
    /// The socket's counters: after the closing handshake when connected, else read
    /// right before the socket was closed in SYN_SENT (no RST is sent then).
    pub info: TcpInfo,
}

/// From namespace `ns`, opens a TCP connection from `src` (address, port 0 for an
/// ephemeral port) to `dst`, waiting at most `timeout` for the handshake. When it is
/// established: writes `payload` bytes, shuts down the write side and waits for the
/// server to close, then reads `TCP_INFO`. When it is not: reads `TCP_INFO` (the SYN
/// and its retransmissions) and closes the socket.
pub fn tcp_exchange_from(
    ns: &str,
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
    payload: usize,
) -> ClientOutcome {
    with_netns(ns, move || {
        let domain = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        assert!(fd >= 0, "TCP socket: {}", io::Error::last_os_error());
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (sa, salen) = sockaddr(src);
        // SAFETY: valid fd and address of the given length.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), &sa as *const _ as *const _, salen) };
        assert_eq!(rc, 0, "bind {src}: {}", io::Error::last_os_error());
        let (da, dalen) = sockaddr(dst);
        // SAFETY: valid fd and address of the given length.
        let rc = unsafe { libc::connect(fd.as_raw_fd(), &da as *const _ as *const _, dalen) };
        let err = io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect {src} -> {dst}: {err}"
        );
        let deadline = Instant::now() + timeout;
        let connected = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            assert!(n >= 0, "poll: {}", io::Error::last_os_error());
            if n == 0 {
                continue;
            }
            let mut soerr: libc::c_int = 0;
            let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: valid fd, option value of the right type and size.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    &mut soerr as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "SO_ERROR: {}", io::Error::last_os_error());
            assert_eq!(
                soerr,
                0,
                "connect {src} -> {dst} failed: {}",
                io::Error::from_raw_os_error(soerr)
            );
            break true;
        };
        let mut s = TcpStream::from(fd);
        let local = s.local_addr().expect("local_addr");
        if !connected {
            let info = tcp_info_fd(s.as_raw_fd());
            drop(s);
            return ClientOutcome {
                local,
                connected,
                info,
            };
        }
        s.set_nonblocking(false).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let mut left = payload;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).expect("TCP write");
            left -= n;
        }
        s.shutdown(Shutdown::Write).expect("TCP shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .expect("waiting for the server to close");
        assert!(rest.is_empty(), "server sent data");
        ClientOutcome {
            local,
            connected,
            info: tcp_info_fd(s.as_raw_fd()),
        }
    })
}

/// One connection a [`TcpServer`] served.
#[derive(Debug, Clone, Copy)]
pub struct ServedConn {
    pub peer: SocketAddr,
    /// Payload bytes received before EOF.
    pub received: u64,
    /// The server socket's counters once the connection reached CLOSE (the client
    /// acknowledged the server's FIN: nothing more can leave this socket). The SYN-ACK
    /// is not among them: the listener's request socket sent it, not this one (see
    /// [`ServedConn::segments`]).
    pub info: TcpInfo,
}

impl ServedConn {
    /// Segments the server sent on this connection: the accepted socket's `segs_out`
    /// plus the SYN-ACK (assuming it was not retransmitted).
    pub fn segments(&self) -> u32 {
        self.info.segs_out + 1
    }
}

/// A TCP server in a namespace: accepts any number of connections; each one is read to
/// EOF, then closed by the server (FIN), and its counters are kept.
pub struct TcpServer {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<ServedConn>>>,
    handle: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl TcpServer {
    pub fn bind(ns: &str, addr: SocketAddr) -> TcpServer {
        let listener = with_netns(ns, move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding TCP {addr}: {e}"))
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (st, sv) = (stop.clone(), served.clone());
        let handle = thread::spawn(move || {
            let mut workers = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        let sv = sv.clone();
                        workers.push(thread::spawn(move || {
                            if let Some(c) = serve(conn, peer) {
                                sv.lock().unwrap().push(c);
                            }
                        }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            workers
        });
        TcpServer {
            stop,
            served,
            handle: Some(handle),
        }
    }

    /// Stops accepting, waits for the connections in progress, and returns every
    /// connection served.
    pub fn finish(mut self) -> Vec<ServedConn> {
        self.stop.store(true, Ordering::Relaxed);
        let workers = self.handle.take().unwrap().join().expect("accept thread");
        for w in workers {
            w.join().expect("TCP server connection thread panicked");
        }
        let v = self.served.lock().unwrap().clone();
        v
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut conn: TcpStream, peer: SocketAddr) -> Option<ServedConn> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) => panic!("TCP server reading from {peer}: {e}"),
        }
    }
    conn.shutdown(Shutdown::Write).ok()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = tcp_info_fd(conn.as_raw_fd());
        if info.state == TCP_CLOSE {
            return Some(ServedConn {
                peer,
                received,
                info,
            });
        }
        assert!(
            Instant::now() < deadline,
            "connection from {peer} did not reach CLOSE: {info:?}"
        );
        thread::sleep(Duration::from_millis(2));
    }
}
