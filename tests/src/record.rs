//! Flow log records as the agent prints them (one JSON object per line), with typed
//! getters, filters and the shape check of the record contract.
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The 21 base fields, in the contract's order.
pub const BASE_KEYS: [&str; 21] = [
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

/// Extra fields of a SKIPDATA record, after the base fields.
pub const SKIP_KEYS: [&str; 3] = ["skipped-streams", "skipped-packets", "skipped-bytes"];

/// Fields that describe traffic: all `-` in NODATA and SKIPDATA records.
pub const TRAFFIC_KEYS: [&str; 12] = [
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
    "tcp-flags",
    "traffic_path",
];

/// One record, keeping the key order of the line it was parsed from.
#[derive(Debug, Clone)]
pub struct Record {
    pub fields: Vec<(String, Value)>,
    pub raw: String,
}

struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Ordered(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl Record {
    /// Parses one stdout line; an error for anything but a JSON object.
    pub fn parse(line: &str) -> Result<Record, String> {
        let Ordered(fields) =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object ({e}): {line}"))?;
        Ok(Record {
            fields,
            raw: line.to_string(),
        })
    }

    /// The string value of `key`, `None` if absent or not a string.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_str())
    }

    /// The string value of `key`; panics (showing the record) if absent.
    pub fn field(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("record has no string field {key:?}: {}", self.raw))
    }

    /// `key` parsed as an unsigned integer; panics (showing the record) otherwise.
    pub fn num(&self, key: &str) -> u64 {
        let v = self.field(key);
        v.parse()
            .unwrap_or_else(|_| panic!("field {key:?} = {v:?} is not an integer: {}", self.raw))
    }

    pub fn packets(&self) -> u64 {
        self.num("packets")
    }
    pub fn bytes(&self) -> u64 {
        self.num("bytes")
    }
    pub fn start(&self) -> u64 {
        self.num("start")
    }
    pub fn end(&self) -> u64 {
        self.num("end")
    }
    /// `protocol` as a number (panics for "-").
    pub fn protocol(&self) -> u64 {
        self.num("protocol")
    }
    pub fn tcp_flags(&self) -> u64 {
        self.num("tcp-flags")
    }
    pub fn status(&self) -> &str {
        self.field("log-status")
    }
    pub fn direction(&self) -> &str {
        self.field("direction")
    }
    pub fn eni(&self) -> &str {
        self.field("eni-id")
    }
    /// `rule-id` of an extended-format OK record: a rule id, `default`, `tracked` or
    /// `-`.
    pub fn rule_id(&self) -> &str {
        self.field("rule-id")
    }
    pub fn action(&self) -> &str {
        self.field("action")
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Sum of packets and bytes of `records`.
/// The records of a JSON-lines file an agent appended to (none if it does not exist).
pub fn read_records(path: &str) -> Vec<Record> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| Record::parse(l).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

pub fn totals<'a>(records: impl IntoIterator<Item = &'a Record>) -> (u64, u64) {
    records
        .into_iter()
        .fold((0, 0), |(p, b), r| (p + r.packets(), b + r.bytes()))
}

/// Selects records by field values; unset criteria match anything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    criteria: Vec<(&'static str, String)>,
}

impl Filter {
    /// Matches any record.
    pub fn any() -> Filter {
        Filter::default()
    }
    /// Matches `log-status` OK.
    pub fn ok() -> Filter {
        Filter::any().status("OK")
    }
    /// Adds `key == value`.
    pub fn with(mut self, key: &'static str, value: impl ToString) -> Filter {
        self.criteria.push((key, value.to_string()));
        self
    }
    pub fn status(self, v: impl ToString) -> Filter {
        self.with("log-status", v)
    }
    pub fn dir(self, v: impl ToString) -> Filter {
        self.with("direction", v)
    }
    pub fn proto(self, v: impl ToString) -> Filter {
        self.with("protocol", v)
    }
    pub fn src(self, v: impl ToString) -> Filter {
        self.with("srcaddr", v)
    }
    pub fn dst(self, v: impl ToString) -> Filter {
        self.with("dstaddr", v)
    }
    pub fn sport(self, v: impl ToString) -> Filter {
        self.with("srcport", v)
    }
    pub fn dport(self, v: impl ToString) -> Filter {
        self.with("dstport", v)
    }
    pub fn eni(self, v: impl ToString) -> Filter {
        self.with("eni-id", v)
    }

    pub fn matches(&self, r: &Record) -> bool {
        self.criteria
            .iter()
            .all(|(k, v)| r.get(k) == Some(v.as_str()))
    }

    pub fn select<'a>(&self, records: &'a [Record]) -> Vec<&'a Record> {
        records.iter().filter(|r| self.matches(r)).collect()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .criteria
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "[{}]", parts.join(" "))
    }
}

fn is_uint(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Panics (naming the problem and showing the record) unless `r` has the contract's
/// shape: the 21 base keys in order (plus the three skip counters, only for SKIPDATA),
/// all values strings, and values from the documented sets.
pub fn validate_record_shape(r: &Record) {
    let keys: Vec<&str> = r.fields.iter().map(|(k, _)| k.as_str()).collect();
    let status = r.get("log-status").unwrap_or("");
    let mut expected: Vec<&str> = BASE_KEYS.to_vec();
    if status == "SKIPDATA" {
        expected.extend_from_slice(&SKIP_KEYS);
    }
    assert_eq!(keys, expected, "keys/order differ from the contract: {r}");
    for (k, v) in &r.fields {
        assert!(v.is_string(), "field {k:?} is not a string: {r}");
    }
    assert_eq!(r.field("version"), "1", "version: {r}");
    let one_of = |key: &str, set: &[&str]| {
        let v = r.field(key);
        assert!(set.contains(&v), "{key} = {v:?} not in {set:?}: {r}");
    };
    one_of("log-status", &["OK", "NODATA", "SKIPDATA"]);
    one_of("type", &["IPv4", "IPv6", "-"]);
    one_of("direction", &["in", "out", "-"]);
    one_of("action", &["ACCEPT", "REJECT", "-"]);
    for k in ["account-id", "eni-id", "vm-id", "vswitch-id", "vpc-id"] {
        assert!(!r.field(k).is_empty(), "{k} is empty (use \"-\"): {r}");
    }
    assert!(is_uint(r.field("start")), "start not an integer: {r}");
    assert!(is_uint(r.field("end")), "end not an integer: {r}");
    assert!(r.start() <= r.end(), "start > end: {r}");
    let tp = r.field("traffic_path");
    assert!(tp == "-" || is_uint(tp), "traffic_path: {r}");
    match status {
        "OK" => {
            for k in ["type", "direction", "action"] {
                assert_ne!(r.field(k), "-", "{k} is \"-\" in an OK record: {r}");
            }
            for k in ["protocol", "packets", "bytes"] {
                assert!(is_uint(r.field(k)), "{k} not an integer: {r}");
            }
            assert!(r.packets() > 0, "OK record with 0 packets: {r}");
            assert!(r.protocol() <= 255, "protocol out of range: {r}");
            let family = r.field("type");
            for k in ["srcaddr", "dstaddr"] {
                let a = r.field(k);
                let ok = match family {
                    "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                    _ => a
                        .parse::<std::net::Ipv6Addr>()
                        .is_ok_and(|v6| v6.to_string() == a),
                };
                assert!(ok, "{k} = {a:?} is not a canonical {family} address: {r}");
            }
            for k in ["srcport", "dstport"] {
                let p = r.field(k);
                assert!(
                    p == "-" || p.parse::<u16>().is_ok(),
                    "{k} = {p:?} is neither a port nor \"-\": {r}"
                );
            }
            let flags = r.field("tcp-flags");
            if r.protocol() == 6 {
                assert!(is_uint(flags), "tcp-flags of a TCP stream: {r}");
            }
        }
        _ => {
            for k in TRAFFIC_KEYS {
                assert_eq!(r.field(k), "-", "{k} should be \"-\" in {status}: {r}");
            }
            if status == "SKIPDATA" {
                for k in SKIP_KEYS {
                    assert!(is_uint(r.field(k)), "{k} not an integer: {r}");
                }
            }
        }
    }
}

/// [`validate_record_shape`] for `--record-format extended`: every record ends with
/// `record-id` (16 lowercase hex digits); before it, OK records carry `rule-id`, holding
/// a rule id, `default`, `tracked` or `-`; NODATA and SKIPDATA records keep the base
/// shape.
pub fn validate_extended_record_shape(r: &Record) {
    let (last, id) = r
        .fields
        .last()
        .unwrap_or_else(|| panic!("empty record: {r}"));
    assert_eq!(last, "record-id", "record-id is not the last field: {r}");
    let id = id.as_str().unwrap_or_default();
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "record-id {id:?} is not 16 hex digits: {r}"
    );
    let r = &Record {
        fields: r.fields[..r.fields.len() - 1].to_vec(),
        raw: r.raw.clone(),
    };
    if r.get("log-status") != Some("OK") {
        assert!(
            r.get("rule-id").is_none(),
            "rule-id outside an OK record: {r}"
        );
        validate_record_shape(r);
        return;
    }
    let (last, _) = r
        .fields
        .last()
        .unwrap_or_else(|| panic!("empty record: {r}"));
    assert_eq!(
        last, "rule-id",
        "rule-id is not the last field before record-id: {r}"
    );
    let id = r.rule_id();
    assert!(
        matches!(id, "default" | "tracked" | "-") || id.parse::<u32>().is_ok(),
        "rule-id = {id:?} is neither a rule id nor default/tracked/-: {r}"
    );
    let base = Record {
        fields: r.fields[..r.fields.len() - 1].to_vec(),
        raw: r.raw.clone(),
    };
    validate_record_shape(&base);
}
