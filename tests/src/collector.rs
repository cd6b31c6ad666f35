//! A TCP line collector (the receiving end of the agent's `tcp` sink) listening in a
//! namespace, that can be stopped and started again on the same address.
//!
//! Every complete line of every connection is kept in arrival order. A connection
//! that ends in the middle of a line (the sender's connection broke) leaves that
//! part out and counts it in [`Collector::cut_lines`], as a real receiver must.
use std::{
    io::{ErrorKind, Read},
    net::{Shutdown, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::with_netns;

/// A collector; stopped on drop.
pub struct Collector {
    ns: String,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    cut: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Collector {
    /// Listens on `addr` in namespace `ns`.
    pub fn start(ns: &str, addr: SocketAddr) -> Collector {
        let mut c = Collector {
            ns: ns.to_string(),
            addr,
            lines: Arc::default(),
            cut: Arc::default(),
            connections: Arc::default(),
            running: None,
        };
        c.resume();
        c
    }

    /// A collector on `addr` that is not listening yet ([`Collector::resume`]).
    pub fn stopped(ns: &str, addr: SocketAddr) -> Collector {
        Collector {
            ns: ns.to_string(),
            addr,
            lines: Arc::default(),
            cut: Arc::default(),
            connections: Arc::default(),
            running: None,
        }
    }

    /// Listens again (after [`Collector::pause`]), keeping the lines received.
    pub fn resume(&mut self) {
        assert!(self.running.is_none(), "collector already running");
        let addr = self.addr;
        let listener = with_netns(&self.ns, move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding TCP {addr}: {e}"))
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, lines, cut, conns) = (
            stop.clone(),
            self.lines.clone(),
            self.cut.clone(),
            self.connections.clone(),
        );
        let handle = thread::spawn(move || {
            let mut readers = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        conns.fetch_add(1, Ordering::Relaxed);
                        let (s, lines, cut) = (s.clone(), lines.clone(), cut.clone());
                        readers.push(thread::spawn(move || read_lines(stream, &s, &lines, &cut)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
            drop(listener);
            for r in readers {
                r.join().unwrap();
            }
        });
        self.running = Some((stop, handle));
    }

    /// Stops listening and closes every connection (after reading what already
    /// arrived).
    pub fn pause(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.store(true, Ordering::Relaxed);
            handle.join().unwrap();
        }
    }

    /// The complete lines received so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` lines arrived, then a little longer for
    /// any beyond; returns the lines.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while self.lines.lock().unwrap().len() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(300));
        self.lines()
    }

    /// Lines cut by a connection that ended in their middle.
    pub fn cut_lines(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.pause();
    }
}

fn read_lines(
    mut stream: std::net::TcpStream,
    stop: &AtomicBool,
    lines: &Mutex<Vec<String>>,
    cut: &AtomicU64,
) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                    let whole: Vec<u8> = pending.drain(..=end).collect();
                    let mut l = lines.lock().unwrap();
                    for line in whole.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                        l.push(String::from_utf8_lossy(line).into_owned());
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if !pending.is_empty() {
        cut.fetch_add(1, Ordering::Relaxed);
    }
    let _ = stream.shutdown(Shutdown::Both);
}
