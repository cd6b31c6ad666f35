//! Bounded traffic generators between test namespaces, and kernel SNMP counters.
//!
//! Sockets are created on a thread that entered the sending (or receiving) namespace,
//! so they belong to that namespace; the rest of the work can happen anywhere. All
//! loops have deadlines.
use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{ns_exec, with_netns};

/// Sends one UDP datagram per entry of `payload_sizes` from `src` (bound, so the
/// source port is fixed) to `dst`, inside namespace `ns`. ENOBUFS/EAGAIN are retried so
/// that exactly `payload_sizes.len()` datagrams leave; returns how many `sendto` calls
/// succeeded. With `spread`, the datagrams are paced evenly over that duration.
pub fn udp_send(
    ns: &str,
    src: SocketAddr,
    dst: SocketAddr,
    payload_sizes: &[usize],
    spread: Option<Duration>,
) -> usize {
    let sizes = payload_sizes.to_vec();
    let sock = with_netns(ns, move || {
        UdpSocket::bind(src).unwrap_or_else(|e| panic!("binding UDP {src}: {e}"))
    });
    let max = sizes.iter().copied().max().unwrap_or(0);
    let buf: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
    let n = sizes.len();
    let start = Instant::now();
    let deadline = start + spread.unwrap_or_default() + Duration::from_secs(20);
    let mut sent = 0;
    for (i, size) in sizes.iter().enumerate() {
        if let Some(spread) = spread {
            let due = start + spread.mul_f64(i as f64 / n as f64);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                thread::sleep(due - now);
            }
        }
        loop {
            match sock.send_to(&buf[..*size], dst) {
                Ok(_) => {
                    sent += 1;
                    break;
                }
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.kind() == io::ErrorKind::WouldBlock =>
                {
                    assert!(
                        Instant::now() < deadline,
                        "UDP {src} -> {dst}: still {e} at the deadline"
                    );
                    thread::sleep(Duration::from_micros(500));
                }
                Err(e) => panic!("UDP send {src} -> {dst}: {e}"),
            }
        }
    }
    sent
}

/// UDP sockets bound to `addrs` inside namespace `ns` (created up front so that a
/// test can then send on many streams quickly).
pub fn udp_sockets(ns: &str, addrs: &[SocketAddr]) -> Vec<UdpSocket> {
    let addrs = addrs.to_vec();
    with_netns(ns, move || {
        addrs
            .iter()
            .map(|a| UdpSocket::bind(a).unwrap_or_else(|e| panic!("binding UDP {a}: {e}")))
            .collect()
    })
}

/// Makes sure a short burst of traffic that starts now falls into a single
/// wall-clock-aligned window of length `window`: if less than `margin` is left in the
/// current window, or the window began less than 150 ms ago (the agent may not have
/// switched yet), sleeps until 150 ms into the next window.
pub fn settle_into_window(window: Duration, margin: Duration) {
    const AFTER_BOUNDARY: Duration = Duration::from_millis(150);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let w = window.as_nanos();
    let into = Duration::from_nanos((now.as_nanos() % w) as u64);
    let left = window - into;
    if left < margin {
        thread::sleep(left + AFTER_BOUNDARY);
    } else if into < AFTER_BOUNDARY {
        thread::sleep(AFTER_BOUNDARY - into);
    }
}

/// A UDP socket bound in a namespace that drains everything it receives (so that the
/// kernel sends no ICMP port unreachable).
pub struct UdpSink {
    stop: Arc<AtomicBool>,
    datagrams: Arc<AtomicU64>,
    handle: Option<JoinHandle<u64>>,
}

impl UdpSink {
    pub fn bind(ns: &str, addr: SocketAddr) -> UdpSink {
        let sock = with_netns(ns, move || {
            UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding UDP {addr}: {e}"))
        });
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let datagrams = Arc::new(AtomicU64::new(0));
        let (s, d) = (stop.clone(), datagrams.clone());
        let handle = thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut bytes = 0u64;
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    bytes += n as u64;
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
            bytes
        });
        UdpSink {
            stop,
            datagrams,
            handle: Some(handle),
        }
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.datagrams.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `n` datagrams arrived; returns the count.
    pub fn wait_for(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        while self.received() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        self.received()
    }

    /// Stops the receiver; returns (datagrams, payload bytes).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let bytes = self.handle.take().unwrap().join().unwrap();
        (self.received(), bytes)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A TCP server in a namespace: accepts one connection, reads to EOF, closes.
pub struct TcpSink {
    handle: JoinHandle<io::Result<u64>>,
}

impl TcpSink {
    pub fn bind(ns: &str, addr: SocketAddr) -> TcpSink {
        let listener = with_netns(ns, move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding TCP {addr}: {e}"))
        });
        let handle = thread::spawn(move || {
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut conn, _) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "no client"));
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            };
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            Ok(total)
        });
        TcpSink { handle }
    }

    /// Bytes received before EOF.
    pub fn finish(self) -> u64 {
        self.handle
            .join()
            .expect("TCP server thread panicked")
            .expect("TCP server failed")
    }
}

/// What the sending socket of [`tcp_send`] reports (`TCP_INFO`) after the connection
/// closed.
#[derive(Debug, Clone, Copy)]
pub struct TcpSendStats {
    pub local: SocketAddr,
    /// Segments the socket sent: SYN, data (also retransmitted), ACKs, FIN.
    pub segs_out: u32,
    /// Payload bytes sent, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// Segments retransmitted.
    pub total_retrans: u32,
}

fn tcp_info(s: &TcpStream) -> TcpSendStats {
    let info = crate::tcp::tcp_info_fd(s.as_raw_fd());
    TcpSendStats {
        local: s.local_addr().unwrap(),
        segs_out: info.segs_out,
        bytes_sent: info.bytes_sent,
        bytes_retrans: info.bytes_retrans,
        total_retrans: info.total_retrans,
    }
}

/// Connects from namespace `ns` to `dst`, writes exactly `bytes` bytes, shuts down
/// the write side and waits for the server to close (its FIN is then ACKed). Returns
/// the socket's own counters.
pub fn tcp_send(ns: &str, dst: SocketAddr, bytes: usize) -> TcpSendStats {
    with_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("TCP connect to {dst}: {e}"));
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let mut left = bytes;
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
        tcp_info(&s)
    })
}

static PING_ID: AtomicU16 = AtomicU16::new(0x5a5a);

fn inet_checksum(data: &[u8]) -> u16 {
    crate::packet::checksum(data)
}

fn sockaddr_of(addr: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// `ping` without the binary: sends `count` ICMP (or ICMPv6) echo requests with
/// `payload` bytes of data (56 like ping's default: 84 IP bytes over IPv4, 104 over
/// IPv6), `interval` apart, from namespace `ns` over a raw socket, and returns how many
/// distinct replies came back within a second of the last request.
pub fn ping(ns: &str, dst: IpAddr, count: u16, payload: usize, interval: Duration) -> u16 {
    with_netns(ns, move || {
        let (domain, proto) = match dst {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
        };
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: valid fd, option value of the right type and size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        let id = (std::process::id() as u16) ^ PING_ID.fetch_add(0x1001, Ordering::Relaxed);
        let (req_type, rep_type) = match dst {
            IpAddr::V4(_) => (8u8, 0u8),
            IpAddr::V6(_) => (128u8, 129u8),
        };
        let (sa, salen) = sockaddr_of(dst);
        for seq in 0..count {
            let mut msg = vec![req_type, 0, 0, 0];
            msg.extend_from_slice(&id.to_be_bytes());
            msg.extend_from_slice(&seq.to_be_bytes());
            msg.extend((0..payload).map(|i| (i & 0xff) as u8));
            if dst.is_ipv4() {
                // The kernel fills the ICMPv6 checksum itself, not the ICMPv4 one.
                let c = inet_checksum(&msg);
                msg[2..4].copy_from_slice(&c.to_be_bytes());
            }
            // SAFETY: valid fd, buffer and address of the given lengths.
            let n = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    msg.as_ptr() as *const libc::c_void,
                    msg.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    salen,
                )
            };
            assert_eq!(
                n,
                msg.len() as isize,
                "echo request to {dst}: {}",
                io::Error::last_os_error()
            );
            if seq + 1 < count {
                thread::sleep(interval);
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 4096];
        while seen.len() < count as usize && Instant::now() < deadline {
            // SAFETY: valid fd and buffer.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n <= 0 {
                continue;
            }
            let pkt = &buf[..n as usize];
            // IPv4 raw sockets deliver the IP header, IPv6 ones do not.
            let icmp = if dst.is_ipv4() {
                let ihl = ((pkt[0] & 0x0f) as usize) * 4;
                &pkt[ihl.min(pkt.len())..]
            } else {
                pkt
            };
            if icmp.len() >= 8
                && icmp[0] == rep_type
                && u16::from_be_bytes([icmp[4], icmp[5]]) == id
            {
                seen.insert(u16::from_be_bytes([icmp[6], icmp[7]]));
            }
        }
        seen.len() as u16
    })
}

/// Parses `/proc/net/snmp` of namespace `ns` into `"Proto:Name" -> value`
/// (e.g. `"Tcp:OutSegs"`).
pub fn read_snmp(ns: &str) -> BTreeMap<String, i64> {
    read_pairs(ns, "/proc/net/snmp")
}

/// Parses `/proc/net/netstat` (`TcpExt:`, `IpExt:`...) of namespace `ns`, as
/// [`read_snmp`].
pub fn read_netstat(ns: &str) -> BTreeMap<String, i64> {
    read_pairs(ns, "/proc/net/netstat")
}

/// A file of line pairs `Proto: name name...` / `Proto: value value...`.
fn read_pairs(ns: &str, file: &str) -> BTreeMap<String, i64> {
    let text = String::from_utf8_lossy(&ns_exec(ns, &["cat", file]).stdout).into_owned();
    let mut map = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let mut n = names.split_whitespace();
        let mut v = values.split_whitespace();
        let (Some(proto), Some(_)) = (n.next(), v.next()) else {
            continue;
        };
        let proto = proto.trim_end_matches(':');
        for (name, value) in n.zip(v) {
            if let Ok(value) = value.parse() {
                map.insert(format!("{proto}:{name}"), value);
            }
        }
    }
    map
}

/// Parses `/proc/net/snmp6` of namespace `ns` into `name -> value`.
pub fn read_snmp6(ns: &str) -> BTreeMap<String, i64> {
    let text =
        String::from_utf8_lossy(&ns_exec(ns, &["cat", "/proc/net/snmp6"]).stdout).into_owned();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// One counter of [`read_snmp`]; panics if absent.
pub fn snmp_counter(map: &BTreeMap<String, i64>, key: &str) -> i64 {
    *map.get(key)
        .unwrap_or_else(|| panic!("no {key} in /proc/net/snmp: {map:?}"))
}

/// Socket address helpers.
pub fn v4(addr: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr), port)
}
pub fn v6(addr: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(addr), port)
}
