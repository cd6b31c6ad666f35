//! Test harness for flowlog's root-only tests.
//!
//! * [`netns`]: network namespaces and veth pairs as RAII guards, commands run inside a
//!   namespace, and threads that enter a namespace with `setns(2)`.
//! * [`agent`]: runs the `flowlog` binary inside a namespace, collects its JSON records
//!   from stdout and its logs from stderr, stops it with SIGINT.
//! * [`record`]: typed access to records, filters, and the shape check of the record
//!   contract (`/work/shared/spec/flow-log-record.md`).
//! * [`traffic`]: bounded traffic generators between namespaces (UDP, TCP, ICMP echo)
//!   and `/proc/net/snmp` counters.
//! * [`packet`]: a byte-exact packet builder for `BPF_PROG_TEST_RUN` tests.
//! * [`policy`]: temporary policy files for `--policy`, rewritten atomically for reloads.
//! * [`collector`]: a TCP line collector (the `tcp` sink's receiver) that can be
//!   stopped and started again.
//! * [`scrape`]: `/metrics` of a running agent, read by the Python Prometheus parser.
//! * [`tcp`]: TCP clients bound to a chosen source address with a connect timeout, and a
//!   many-connection server, both reporting their sockets' own `TCP_INFO` counters.
//!
//! Everything here needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `setns`, CAP_BPF).
pub mod agent;
pub mod collector;
pub mod control;
pub mod known;
pub mod netns;
pub mod packet;
pub mod policy;
pub mod record;
pub mod scrape;
pub mod tcp;
pub mod traffic;

pub use agent::{agent_bin, run_to_exit, Agent, Exited, Wrapped};
pub use netns::{in_netns, ns_exec, ns_exec_unchecked, with_netns, Netns, VethPair};
pub use record::{read_records, totals, validate_record_shape, Filter, Record};

/// Panics with a clear message unless the tests run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "these tests need root (network namespaces, veth, BPF): run them as root, \
             e.g. `sudo -E cargo test -p flowlog-tests` or `cargo xtask test`"
        );
    }
}
