//! Flow log records of the contract (`spec/flow-log-record.md`) and their JSON-lines
//! form.
//!
//! A [`Record`] borrows the interface metadata and holds the (already CPU-summed)
//! counters; [`Record::write_json`] appends one line to a byte buffer, writing the
//! fields directly in the contract's order ([`BASE_FIELDS`]) with every value a JSON
//! string. No intermediate `serde_json::Value` or map is built: a drain of a full
//! flow map renders tens of thousands of records per window.
//!
//! Beyond the base record, a `SKIPDATA` record carries extension fields after
//! `traffic_path` ([`SKIP_FIELDS`], and `skipped-streams-lower-bound` when the
//! stream count is only a lower bound), so that an overloaded window still reports
//! how much traffic went unrecorded.

use flowlog_common::{action, direction, family, policy, FlowKey, FlowStats, SkipStats};

/// Record format version written in the `version` field.
pub const VERSION: &str = "1";

/// Value of a field that does not apply or is not configured.
pub const UNSET: &str = "-";

/// The 21 base fields of the contract, in output order.
pub const BASE_FIELDS: [&str; 21] = [
    "version",
    "account-id",
    "eni-id",
    "vm-id",
    "vswitch-id",
    "vpc-id",
    "type",
    "protocol",
    "srcaddr",
    "srcport",
    "dstaddr",
    "dstport",
    "direction",
    "action",
    "packets",
    "bytes",
    "start",
    "end",
    "tcp-flags",
    "log-status",
    "traffic_path",
];

/// Extension fields of a `SKIPDATA` record, appended after `traffic_path`.
pub const SKIP_FIELDS: [&str; 3] = ["skipped-streams", "skipped-packets", "skipped-bytes"];

/// Extension field present (value `"true"`) when `skipped-streams` is a lower bound.
pub const SKIP_LOWER_BOUND_FIELD: &str = "skipped-streams-lower-bound";

/// Configured identity of one interface, written into every record seen on it.
///
/// `None` (and an empty string) is written as `-`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InterfaceMeta {
    /// The `eni-id` field: the configured id, by default the interface name.
    pub eni_id: String,
    pub account_id: Option<String>,
    pub vm_id: Option<String>,
    pub vswitch_id: Option<String>,
    pub vpc_id: Option<String>,
}

/// Which fields a record carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// The contract's base field set (plus the SKIPDATA counters).
    #[default]
    Base,
    /// Base fields, then `rule-id` on OK records: the id of the policy rule that
    /// decided the stream's last packet, `default` (no rule matched), `tracked`
    /// (a connection a stateful rule set had accepted) or `-` (no policy).
    Extended,
}

/// The `log-status` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStatus {
    Ok,
    NoData,
    SkipData,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStatus::Ok => "OK",
            LogStatus::NoData => "NODATA",
            LogStatus::SkipData => "SKIPDATA",
        }
    }
}

/// One flow log record. `start` and `end` are unix seconds, computed by the caller
/// (for a stream: its first packet in the window, and the window end or its last
/// packet if it closed; for `NODATA`/`SKIPDATA`: the window bounds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// One stream (`log-status` `OK`). `stats` must already be summed across CPUs.
    Flow {
        meta: &'a InterfaceMeta,
        key: FlowKey,
        stats: FlowStats,
        start: u64,
        end: u64,
    },
    /// No traffic on the interface in the window.
    NoData {
        meta: &'a InterfaceMeta,
        start: u64,
        end: u64,
    },
    /// Streams on the interface could not be recorded (flow map full).
    SkipData {
        meta: &'a InterfaceMeta,
        start: u64,
        end: u64,
        skipped: SkipStats,
    },
}

impl Record<'_> {
    pub fn log_status(&self) -> LogStatus {
        match self {
            Record::Flow { .. } => LogStatus::Ok,
            Record::NoData { .. } => LogStatus::NoData,
            Record::SkipData { .. } => LogStatus::SkipData,
        }
    }

    pub fn meta(&self) -> &InterfaceMeta {
        match self {
            Record::Flow { meta, .. }
            | Record::NoData { meta, .. }
            | Record::SkipData { meta, .. } => meta,
        }
    }

    /// A stable id of this record: FNV-1a (64 bit) over the agent id, `eni-id`,
    /// `start`, `end`, `log-status` and, for streams, the stream key (type, protocol,
    /// addresses, ports, direction, action). The same record sent twice has the same
    /// id (consumers deduplicate on it); records of different streams, interfaces,
    /// windows or agents differ.
    pub fn record_id(&self, agent_id: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes.iter().chain([&0xffu8]) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        let (start, end) = match self {
            Record::Flow { start, end, .. }
            | Record::NoData { start, end, .. }
            | Record::SkipData { start, end, .. } => (*start, *end),
        };
        eat(agent_id.as_bytes());
        eat(self.meta().eni_id.as_bytes());
        eat(&start.to_le_bytes());
        eat(&end.to_le_bytes());
        eat(&[self.log_status() as u8]);
        if let Record::Flow { key, .. } = self {
            eat(&[
                key.family,
                key.protocol,
                key.direction,
                key.action,
                key.flags,
            ]);
            eat(&key.src_addr);
            eat(&key.dst_addr);
            eat(&key.src_port.to_le_bytes());
            eat(&key.dst_port.to_le_bytes());
        }
        h
    }

    /// Appends `"record-id":"<16 hex digits>"` to the record line just written (which
    /// ends in `}\n`).
    pub fn push_record_id(&self, out: &mut Vec<u8>, agent_id: &str) {
        debug_assert!(out.ends_with(b"}\n"));
        out.truncate(out.len() - 2);
        out.extend_from_slice(
            format!(",\"record-id\":\"{:016x}\"}}\n", self.record_id(agent_id)).as_bytes(),
        );
    }

    /// Appends the record as one JSON object line, including the trailing `'\n'`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_as(out, RecordFormat::Base)
    }

    /// As [`Record::write_json`], with the fields of `format`.
    pub fn write_json_as(&self, out: &mut Vec<u8>, format: RecordFormat) {
        let meta = self.meta();
        out.extend_from_slice(b"{\"version\":\"");
        out.extend_from_slice(VERSION.as_bytes());
        out.extend_from_slice(b"\",\"account-id\":\"");
        push_meta(out, meta.account_id.as_deref());
        out.extend_from_slice(b"\",\"eni-id\":\"");
        push_meta(out, Some(&meta.eni_id));
        out.extend_from_slice(b"\",\"vm-id\":\"");
        push_meta(out, meta.vm_id.as_deref());
        out.extend_from_slice(b"\",\"vswitch-id\":\"");
        push_meta(out, meta.vswitch_id.as_deref());
        out.extend_from_slice(b"\",\"vpc-id\":\"");
        push_meta(out, meta.vpc_id.as_deref());

        match self {
            Record::Flow {
                key,
                stats,
                start,
                end,
                ..
            } => {
                out.extend_from_slice(b"\",\"type\":\"");
                out.extend_from_slice(match key.family {
                    family::IPV4 => b"IPv4".as_slice(),
                    family::IPV6 => b"IPv6",
                    _ => b"-",
                });
                out.extend_from_slice(b"\",\"protocol\":\"");
                push_u64(out, key.protocol.into());
                let (src, dst) = key.addrs();
                out.extend_from_slice(b"\",\"srcaddr\":\"");
                push_addr(out, src);
                out.extend_from_slice(b"\",\"srcport\":\"");
                push_port(out, key, key.src_port);
                out.extend_from_slice(b"\",\"dstaddr\":\"");
                push_addr(out, dst);
                out.extend_from_slice(b"\",\"dstport\":\"");
                push_port(out, key, key.dst_port);
                out.extend_from_slice(b"\",\"direction\":\"");
                out.extend_from_slice(match key.direction {
                    direction::IN => b"in".as_slice(),
                    direction::OUT => b"out",
                    _ => b"-",
                });
                out.extend_from_slice(b"\",\"action\":\"");
                out.extend_from_slice(match key.action {
                    action::ACCEPT => b"ACCEPT".as_slice(),
                    action::REJECT => b"REJECT",
                    _ => b"-",
                });
                out.extend_from_slice(b"\",\"packets\":\"");
                push_u64(out, stats.packets);
                out.extend_from_slice(b"\",\"bytes\":\"");
                push_u64(out, stats.bytes);
                out.extend_from_slice(b"\",\"start\":\"");
                push_u64(out, *start);
                out.extend_from_slice(b"\",\"end\":\"");
                push_u64(out, *end);
                out.extend_from_slice(b"\",\"tcp-flags\":\"");
                push_u64(out, stats.tcp_flags.into());
                out.extend_from_slice(b"\",\"log-status\":\"OK\",\"traffic_path\":\"");
                if key.traffic_path == flowlog_common::TRAFFIC_PATH_UNCLASSIFIED {
                    out.extend_from_slice(UNSET.as_bytes());
                } else {
                    push_u64(out, key.traffic_path.into());
                }
                if format == RecordFormat::Extended {
                    out.extend_from_slice(b"\",\"rule-id\":\"");
                    match stats.rule_id {
                        policy::RULE_NONE => out.extend_from_slice(UNSET.as_bytes()),
                        policy::RULE_DEFAULT => out.extend_from_slice(b"default"),
                        policy::RULE_TRACKED => out.extend_from_slice(b"tracked"),
                        id => push_u64(out, id.into()),
                    }
                }
                out.extend_from_slice(b"\"}\n");
            }
            Record::NoData { start, end, .. } => {
                push_no_traffic(out, *start, *end, LogStatus::NoData);
                out.extend_from_slice(b"\"}\n");
            }
            Record::SkipData {
                start,
                end,
                skipped,
                ..
            } => {
                push_no_traffic(out, *start, *end, LogStatus::SkipData);
                out.extend_from_slice(b"\",\"skipped-streams\":\"");
                push_u64(out, skipped.streams);
                out.extend_from_slice(b"\",\"skipped-packets\":\"");
                push_u64(out, skipped.packets);
                out.extend_from_slice(b"\",\"skipped-bytes\":\"");
                push_u64(out, skipped.bytes);
                if skipped.uncounted_stream_packets > 0 {
                    out.extend_from_slice(b"\",\"skipped-streams-lower-bound\":\"true");
                }
                out.extend_from_slice(b"\"}\n");
            }
        }
    }
}

/// The traffic fields of a `NODATA`/`SKIPDATA` record, from `type` through
/// `traffic_path`, leaving the last value's string open.
fn push_no_traffic(out: &mut Vec<u8>, start: u64, end: u64, status: LogStatus) {
    out.extend_from_slice(
        b"\",\"type\":\"-\",\"protocol\":\"-\",\"srcaddr\":\"-\",\"srcport\":\"-\",\
\"dstaddr\":\"-\",\"dstport\":\"-\",\"direction\":\"-\",\"action\":\"-\",\
\"packets\":\"-\",\"bytes\":\"-\",\"start\":\"",
    );
    push_u64(out, start);
    out.extend_from_slice(b"\",\"end\":\"");
    push_u64(out, end);
    out.extend_from_slice(b"\",\"tcp-flags\":\"-\",\"log-status\":\"");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"traffic_path\":\"-");
}

/// A metadata value, JSON-escaped; `-` when unset or empty.
fn push_meta(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) if !v.is_empty() => push_escaped(out, v),
        _ => out.extend_from_slice(UNSET.as_bytes()),
    }
}

/// Appends `s` escaped for the inside of a JSON string. Non-ASCII UTF-8 passes
/// through unchanged (valid JSON); quote, backslash and control characters are
/// escaped.
fn push_escaped(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Appends `v` in decimal.
fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_port(out: &mut Vec<u8>, key: &FlowKey, port: u16) {
    if key.has_ports() {
        push_u64(out, port.into());
    } else {
        out.extend_from_slice(UNSET.as_bytes());
    }
}

fn push_addr(out: &mut Vec<u8>, addr: std::net::IpAddr) {
    match addr {
        std::net::IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            push_u64(out, a.into());
            out.push(b'.');
            push_u64(out, b.into());
            out.push(b'.');
            push_u64(out, c.into());
            out.push(b'.');
            push_u64(out, d.into());
        }
        std::net::IpAddr::V6(a) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{a}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_common::{key_flags, TRAFFIC_PATH_UNCLASSIFIED};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ACCEPT_EXAMPLE: &str = r#"{"version":"1","account-id":"1210123456","eni-id":"eni-bp166tg9uk1ryf","vm-id":"i-1","vswitch-id":"vsw-1","vpc-id":"vpc-1","type":"IPv4","protocol":"6","srcaddr":"172.31.16.139","srcport":"1332","dstaddr":"172.31.16.21","dstport":"80","direction":"out","action":"ACCEPT","packets":"10","bytes":"2048","start":"1720775420","end":"1720775480","tcp-flags":"22","log-status":"OK","traffic_path":"-"}"#;
    const NODATA_EXAMPLE: &str = r#"{"version":"1","account-id":"1210123456","eni-id":"eni-bp1j7mmp34jlve","vm-id":"i-1","vswitch-id":"vsw-1","vpc-id":"vpc-1","type":"-","protocol":"-","srcaddr":"-","srcport":"-","dstaddr":"-","dstport":"-","direction":"-","action":"-","packets":"-","bytes":"-","start":"1721011940","end":"1721012120","tcp-flags":"-","log-status":"NODATA","traffic_path":"-"}"#;

    fn meta(eni: &str) -> InterfaceMeta {
        InterfaceMeta {
            eni_id: eni.into(),
            account_id: Some("1210123456".into()),
            vm_id: Some("i-1".into()),
            vswitch_id: Some("vsw-1".into()),
            vpc_id: Some("vpc-1".into()),
        }
    }

    fn v4_key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> FlowKey {
        let mut key = FlowKey {
            ifindex: 2,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: sport,
            dst_port: dport,
            protocol: 6,
            family: family::IPV4,
            direction: direction::OUT,
            action: action::ACCEPT,
            flags: key_flags::PORTS,
            traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
            _pad: [0; 2],
        };
        key.src_addr[..4].copy_from_slice(&src.octets());
        key.dst_addr[..4].copy_from_slice(&dst.octets());
        key
    }

    fn stats(packets: u64, bytes: u64, tcp_flags: u8) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_ns: 1,
            last_ns: 2,
            tcp_flags,
            closed: 0,
            traffic_path: flowlog_common::TRAFFIC_PATH_UNCLASSIFIED,
            _pad: 0,
            rule_id: 0,
        }
    }

    fn line(r: &Record<'_>) -> String {
        let mut out = Vec::new();
        r.write_json(&mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with('\n'), "{s}");
        assert_eq!(s.matches('\n').count(), 1, "{s}");
        s.trim_end_matches('\n').to_owned()
    }

    /// Parses a line with serde_json, keeping the key order and requiring every value
    /// to be a string.
    fn fields(line: &str) -> Vec<(String, String)> {
        struct Ordered(Vec<(String, String)>);
        impl<'de> serde::Deserialize<'de> for Ordered {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Ordered;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a JSON object of strings")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Ordered, A::Error> {
                        let mut v = Vec::new();
                        while let Some(entry) = map.next_entry::<String, String>()? {
                            v.push(entry);
                        }
                        Ok(Ordered(v))
                    }
                }
                d.deserialize_map(V)
            }
        }
        serde_json::from_str::<Ordered>(line)
            .unwrap_or_else(|e| panic!("{e}: {line}"))
            .0
    }

    fn assert_base_fields(line: &str) -> Vec<(String, String)> {
        let f = fields(line);
        let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(&keys[..BASE_FIELDS.len()], &BASE_FIELDS[..], "{line}");
        f
    }

    #[test]
    fn contract_accept_example_byte_for_byte() {
        let m = meta("eni-bp166tg9uk1ryf");
        let r = Record::Flow {
            meta: &m,
            key: v4_key(
                Ipv4Addr::new(172, 31, 16, 139),
                1332,
                Ipv4Addr::new(172, 31, 16, 21),
                80,
            ),
            stats: stats(10, 2048, 22),
            start: 1_720_775_420,
            end: 1_720_775_480,
        };
        let l = line(&r);
        assert_eq!(l, ACCEPT_EXAMPLE);
        assert_eq!(assert_base_fields(&l).len(), 21);
    }

    #[test]
    fn contract_nodata_example_byte_for_byte() {
        let m = meta("eni-bp1j7mmp34jlve");
        let r = Record::NoData {
            meta: &m,
            start: 1_721_011_940,
            end: 1_721_012_120,
        };
        let l = line(&r);
        assert_eq!(l, NODATA_EXAMPLE);
        assert_eq!(assert_base_fields(&l).len(), 21);
        assert_eq!(r.log_status(), LogStatus::NoData);
    }

    #[test]
    fn reject_inbound_and_classified_path() {
        let m = meta("eth0");
        let mut key = v4_key(Ipv4Addr::new(10, 0, 0, 1), 443, Ipv4Addr::BROADCAST, 65535);
        key.direction = direction::IN;
        key.action = action::REJECT;
        key.traffic_path = 13;
        let r = Record::Flow {
            meta: &m,
            key,
            stats: stats(u64::MAX, 0, 2),
            start: 0,
            end: 60,
        };
        let f = assert_base_fields(&line(&r));
        let get = |k: &str| f.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(get("direction"), "in");
        assert_eq!(get("action"), "REJECT");
        assert_eq!(get("traffic_path"), "13");
        assert_eq!(get("packets"), "18446744073709551615");
        assert_eq!(get("bytes"), "0");
        assert_eq!(get("dstaddr"), "255.255.255.255");
        assert_eq!(get("dstport"), "65535");
        assert_eq!(get("tcp-flags"), "2");
        // traffic_path 0 is a real value, not unset.
        key.traffic_path = 0;
        let r = Record::Flow {
            meta: &m,
            key,
            stats: stats(1, 1, 0),
            start: 0,
            end: 60,
        };
        assert!(line(&r).ends_with(r#""log-status":"OK","traffic_path":"0"}"#));
    }

    #[test]
    fn ipv6_addresses_in_compressed_form() {
        let m = meta("eth0");
        let mut key = v4_key(Ipv4Addr::UNSPECIFIED, 5353, Ipv4Addr::UNSPECIFIED, 5353);
        key.family = family::IPV6;
        key.protocol = 17;
        key.src_addr = "fe80::1:2".parse::<Ipv6Addr>().unwrap().octets();
        key.dst_addr = "ff02::fb".parse::<Ipv6Addr>().unwrap().octets();
        let r = Record::Flow {
            meta: &m,
            key,
            stats: stats(3, 300, 0),
            start: 100,
            end: 160,
        };
        let l = line(&r);
        assert!(
            l.contains(r#""type":"IPv6","protocol":"17","srcaddr":"fe80::1:2","srcport":"5353","dstaddr":"ff02::fb","dstport":"5353""#),
            "{l}"
        );
        // Non-TCP streams still print tcp-flags in decimal.
        assert!(l.contains(r#""tcp-flags":"0""#), "{l}");
        assert_base_fields(&l);

        key.src_addr = "2001:db8::ffff:1.2.3.4"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets();
        key.dst_addr = Ipv6Addr::LOCALHOST.octets();
        let r = Record::Flow {
            meta: &m,
            key,
            stats: stats(3, 300, 0),
            start: 100,
            end: 160,
        };
        let l = line(&r);
        assert!(l.contains(r#""srcaddr":"2001:db8::ffff:102:304","#), "{l}");
        assert!(l.contains(r#""dstaddr":"::1","#), "{l}");
    }

    #[test]
    fn record_ids_are_stable_and_tell_records_apart() {
        let m = meta("eth0");
        let m2 = meta("eth1");
        let key = v4_key(
            Ipv4Addr::new(10, 0, 0, 1),
            40000,
            Ipv4Addr::new(10, 0, 0, 2),
            80,
        );
        let flow = |meta, key, start, end| Record::Flow {
            meta,
            key,
            stats: stats(3, 300, 0),
            start,
            end,
        };
        let a = flow(&m, key, 100, 160);
        assert_eq!(a.record_id("gw"), a.record_id("gw"), "stable");
        // Counters are not part of the identity: a re-sent record keeps its id.
        let mut same = a;
        if let Record::Flow { stats: s, .. } = &mut same {
            s.packets = 99;
        }
        assert_eq!(same.record_id("gw"), a.record_id("gw"));
        let mut other_port = key;
        other_port.src_port = 40001;
        let mut reply = key;
        reply.direction ^= 1;
        let ids = [
            a.record_id("gw"),
            a.record_id("gw2"),
            flow(&m2, key, 100, 160).record_id("gw"),
            flow(&m, key, 160, 220).record_id("gw"),
            flow(&m, other_port, 100, 160).record_id("gw"),
            flow(&m, reply, 100, 160).record_id("gw"),
            Record::NoData {
                meta: &m,
                start: 100,
                end: 160,
            }
            .record_id("gw"),
        ];
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:x?}");
        let mut out = Vec::new();
        a.write_json_as(&mut out, RecordFormat::Extended);
        a.push_record_id(&mut out, "gw");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["record-id"], format!("{:016x}", a.record_id("gw")));
        assert!(out.ends_with(b"\"}\n"));
    }

    #[test]
    fn ports_unset_without_the_ports_flag() {
        let m = meta("eth0");
        let mut key = v4_key(Ipv4Addr::new(1, 2, 3, 4), 0, Ipv4Addr::new(5, 6, 7, 8), 0);
        key.protocol = 1;
        key.flags = 0;
        let r = Record::Flow {
            meta: &m,
            key,
            stats: stats(1, 84, 0),
            start: 1,
            end: 2,
        };
        let l = line(&r);
        assert!(
            l.contains(r#""protocol":"1","srcaddr":"1.2.3.4","srcport":"-","dstaddr":"5.6.7.8","dstport":"-","#),
            "{l}"
        );
        assert_base_fields(&l);
    }

    #[test]
    fn unset_metadata_is_a_dash_and_strings_are_escaped() {
        let m = InterfaceMeta {
            eni_id: "eth0".into(),
            account_id: None,
            vm_id: Some(String::new()),
            vswitch_id: Some("a\"b\\c\nd\te\u{1}f\u{1f}g\u{7f}é".into()),
            vpc_id: None,
        };
        let r = Record::NoData {
            meta: &m,
            start: 0,
            end: 60,
        };
        let l = line(&r);
        assert!(
            l.starts_with(
                r#"{"version":"1","account-id":"-","eni-id":"eth0","vm-id":"-","vswitch-id":"a\"b\\c\nd\te\u0001f\u001fg"#
            ),
            "{l}"
        );
        let f = assert_base_fields(&l);
        assert_eq!(f[4].1, "a\"b\\c\nd\te\u{1}f\u{1f}g\u{7f}é");
        assert_eq!(f[5].1, "-");
    }

    #[test]
    fn skipdata_has_nodata_shape_plus_extension_fields() {
        let m = meta("eni-1");
        let mut skipped = SkipStats {
            streams: 7,
            packets: 1000,
            bytes: 1_500_000,
            uncounted_stream_packets: 0,
        };
        let r = Record::SkipData {
            meta: &m,
            start: 1_721_011_940,
            end: 1_721_012_000,
            skipped,
        };
        let l = line(&r);
        let f = assert_base_fields(&l);
        assert_eq!(f.len(), 24);
        assert_eq!(f[19], ("log-status".into(), "SKIPDATA".into()));
        let extra: Vec<(&str, &str)> = f[21..]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            extra,
            [
                ("skipped-streams", "7"),
                ("skipped-packets", "1000"),
                ("skipped-bytes", "1500000")
            ]
        );
        // Same base shape as NODATA.
        let nodata = line(&Record::NoData {
            meta: &m,
            start: 1_721_011_940,
            end: 1_721_012_000,
        });
        let base_skip: Vec<_> = f[..21].to_vec();
        let mut base_nodata = fields(&nodata);
        base_nodata[19].1 = "SKIPDATA".into();
        assert_eq!(base_skip, base_nodata);

        skipped.uncounted_stream_packets = 5;
        let r = Record::SkipData {
            meta: &m,
            start: 0,
            end: 60,
            skipped,
        };
        let l = line(&r);
        let f = assert_base_fields(&l);
        assert_eq!(f.len(), 25);
        assert_eq!(f[24], (SKIP_LOWER_BOUND_FIELD.into(), "true".into()));
        for (i, name) in SKIP_FIELDS.iter().enumerate() {
            assert_eq!(f[21 + i].0, *name);
        }
    }

    #[test]
    fn lines_append_to_the_buffer() {
        let m = meta("eni-1");
        let mut out = b"prefix\n".to_vec();
        Record::NoData {
            meta: &m,
            start: 0,
            end: 60,
        }
        .write_json(&mut out);
        Record::NoData {
            meta: &m,
            start: 60,
            end: 120,
        }
        .write_json(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "prefix");
        assert!(lines[2].contains(r#""start":"60","end":"120""#));
    }

    #[test]
    fn decimal_formatting() {
        for v in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
        }
    }
}
