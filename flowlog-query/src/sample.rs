//! Deterministic generated flow log records, for tests, benchmarks and demos.
//!
//! [`generate`] makes one capture window per minute over three interfaces with a
//! known mix: IPv4 and IPv6, TCP/UDP/ICMP (ICMP without ports), in and out,
//! ACCEPT and REJECT, a frequent inbound `10.0.0.1:80` service, hosts in
//! `10.0.0.0/24`, `10.1.0.0/24`, `192.168.1.0/24` and on the Internet. An
//! interface without streams in a window gets a `NODATA` record; now and then an
//! interface reports `SKIPDATA` (with the skipped counters); records of `eni-c`
//! carry the extended format's `rule-id`. The same seed gives the same records.
//! [`SampleRecord::to_json`] renders the contract's JSON line (every value a
//! string, `-` where a field does not apply).

use std::{fmt::Write as _, io, path::Path};

/// One generated record, typed (traffic fields are `None` in NODATA/SKIPDATA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleRecord {
    pub account_id: &'static str,
    pub eni_id: &'static str,
    pub vm_id: &'static str,
    pub vswitch_id: &'static str,
    pub vpc_id: &'static str,
    pub log_status: &'static str,
    pub family: Option<&'static str>,
    pub protocol: Option<u8>,
    pub srcaddr: Option<String>,
    pub srcport: Option<u16>,
    pub dstaddr: Option<String>,
    pub dstport: Option<u16>,
    pub direction: Option<&'static str>,
    pub action: Option<&'static str>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub start: i64,
    pub end: i64,
    pub tcp_flags: Option<u8>,
    pub traffic_path: Option<u8>,
    /// Extended format only (OK records).
    pub rule_id: Option<String>,
    /// SKIPDATA only: streams, packets, bytes.
    pub skipped: Option<(u64, u64, u64)>,
}

/// What to generate.
#[derive(Clone, Copy, Debug)]
pub struct SampleSpec {
    /// Unix seconds of the first window (rounded down to a minute).
    pub start: i64,
    /// Number of one-minute windows.
    pub minutes: u32,
    /// Upper bound of streams per interface per window.
    pub max_streams: u32,
    pub seed: u64,
}

impl Default for SampleSpec {
    fn default() -> Self {
        SampleSpec {
            // 2024-07-12 09:10:00 UTC
            start: 1_720_775_400,
            minutes: 30,
            max_streams: 12,
            seed: 1,
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

struct Eni {
    id: &'static str,
    vm: &'static str,
    vswitch: &'static str,
    vpc: &'static str,
    /// Local IPv4 prefix (first three octets) and host count.
    net: &'static str,
    hosts: u64,
    extended: bool,
}

const ENIS: [Eni; 3] = [
    Eni {
        id: "eni-a",
        vm: "i-1",
        vswitch: "vsw-1",
        vpc: "vpc-1",
        net: "10.0.0",
        hosts: 12,
        extended: false,
    },
    Eni {
        id: "eni-b",
        vm: "i-2",
        vswitch: "vsw-1",
        vpc: "vpc-1",
        net: "10.0.0",
        hosts: 12,
        extended: false,
    },
    Eni {
        id: "eni-c",
        vm: "i-3",
        vswitch: "vsw-2",
        vpc: "vpc-2",
        net: "10.1.0",
        hosts: 6,
        extended: true,
    },
];

const REMOTES: [&str; 9] = [
    "10.0.0.9",
    "10.0.0.10",
    "120.26.1.1",
    "120.26.1.2",
    "203.0.113.5",
    "192.168.1.10",
    "192.168.1.11",
    "172.16.5.5",
    "10.1.0.3",
];

const PORTS: [u16; 6] = [80, 443, 22, 53, 8080, 3306];

/// Generate records (in window order, interfaces in order within a window).
pub fn generate(spec: &SampleSpec) -> Vec<SampleRecord> {
    let mut rng = Rng(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let t0 = spec.start - spec.start.rem_euclid(60);
    let mut out = Vec::new();
    for minute in 0..i64::from(spec.minutes) {
        let w_start = t0 + minute * 60;
        let w_end = w_start + 60;
        for eni in &ENIS {
            let base = |status: &'static str| SampleRecord {
                account_id: "1210123456",
                eni_id: eni.id,
                vm_id: eni.vm,
                vswitch_id: eni.vswitch,
                vpc_id: eni.vpc,
                log_status: status,
                family: None,
                protocol: None,
                srcaddr: None,
                srcport: None,
                dstaddr: None,
                dstport: None,
                direction: None,
                action: None,
                packets: None,
                bytes: None,
                start: w_start,
                end: w_end,
                tcp_flags: None,
                traffic_path: None,
                rule_id: None,
                skipped: None,
            };
            let streams = rng.below(u64::from(spec.max_streams) + 1);
            if streams == 0 {
                out.push(base("NODATA"));
                continue;
            }
            for _ in 0..streams {
                let mut r = base("OK");
                let v6 = rng.chance(8);
                let local = if v6 {
                    format!("fd00::{}", 1 + rng.below(4))
                } else {
                    format!("{}.{}", eni.net, 1 + rng.below(eni.hosts))
                };
                let remote = if v6 {
                    format!("fd00::{}", 10 + rng.below(3))
                } else {
                    rng.pick(&REMOTES).to_string()
                };
                let inbound = rng.chance(50);
                let protocol: u8 = match rng.below(10) {
                    0 => {
                        if v6 {
                            58
                        } else {
                            1
                        }
                    }
                    1 | 2 => 17,
                    _ => 6,
                };
                let has_ports = protocol == 6 || protocol == 17;
                let service = if inbound && !v6 && eni.id == "eni-a" && rng.chance(40) {
                    // The web server everyone talks to.
                    (String::from("10.0.0.1"), 80)
                } else {
                    (local.clone(), *rng.pick(&PORTS))
                };
                let eph = 32_768 + rng.below(28_000) as u16;
                let (src, sport, dst, dport) = if inbound {
                    (remote, eph, service.0, service.1)
                } else {
                    (local, eph, remote, service.1)
                };
                let packets = 1 + rng.below(900);
                let bytes = packets * (40 + rng.below(1460));
                r.family = Some(if v6 { "IPv6" } else { "IPv4" });
                r.protocol = Some(protocol);
                r.srcaddr = Some(src);
                r.dstaddr = Some(dst);
                if has_ports {
                    r.srcport = Some(sport);
                    r.dstport = Some(dport);
                }
                r.direction = Some(if inbound { "in" } else { "out" });
                r.action = Some(if rng.chance(15) { "REJECT" } else { "ACCEPT" });
                r.packets = Some(packets);
                r.bytes = Some(bytes);
                r.start = w_start + rng.below(60) as i64;
                r.end = if rng.chance(30) {
                    r.start + rng.below((w_end - r.start) as u64 + 1) as i64
                } else {
                    w_end
                };
                r.tcp_flags = Some(if protocol == 6 {
                    [2u8, 18, 16, 24, 17, 20, 27][rng.below(7) as usize]
                } else {
                    0
                });
                r.traffic_path = rng.chance(20).then(|| *rng.pick(&[1u8, 3, 9, 13, 15]));
                if eni.extended {
                    r.rule_id = Some(match rng.below(4) {
                        0 => "default".to_string(),
                        1 => "tracked".to_string(),
                        n => n.to_string(),
                    });
                }
                out.push(r);
            }
            if rng.chance(3) {
                let mut r = base("SKIPDATA");
                let streams = 1 + rng.below(50);
                r.skipped = Some((streams, streams * 10, streams * 10_000));
                out.push(r);
            }
        }
    }
    out
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl SampleRecord {
    /// The record as one JSON line (with the trailing newline).
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(420);
        let fields: [(&str, String); 21] = [
            ("version", "1".into()),
            ("account-id", self.account_id.into()),
            ("eni-id", self.eni_id.into()),
            ("vm-id", self.vm_id.into()),
            ("vswitch-id", self.vswitch_id.into()),
            ("vpc-id", self.vpc_id.into()),
            ("type", opt(&self.family)),
            ("protocol", opt(&self.protocol)),
            ("srcaddr", opt(&self.srcaddr)),
            ("srcport", opt(&self.srcport)),
            ("dstaddr", opt(&self.dstaddr)),
            ("dstport", opt(&self.dstport)),
            ("direction", opt(&self.direction)),
            ("action", opt(&self.action)),
            ("packets", opt(&self.packets)),
            ("bytes", opt(&self.bytes)),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
            ("tcp-flags", opt(&self.tcp_flags)),
            ("log-status", self.log_status.into()),
            ("traffic_path", opt(&self.traffic_path)),
        ];
        s.push('{');
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{k}\":\"{v}\"");
        }
        if let Some(rule) = &self.rule_id {
            let _ = write!(s, ",\"rule-id\":\"{rule}\"");
        }
        if let Some((st, p, b)) = self.skipped {
            let _ = write!(
                s,
                ",\"skipped-streams\":\"{st}\",\"skipped-packets\":\"{p}\",\"skipped-bytes\":\"{b}\""
            );
        }
        s.push_str("}\n");
        s
    }
}

/// Write `records` as JSON lines to `path` (replacing it).
pub fn write_jsonl(path: &Path, records: &[SampleRecord]) -> io::Result<()> {
    use std::io::Write as _;
    let mut w = io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        w.write_all(r.to_json().as_bytes())?;
    }
    w.flush()
}
