//! The `ipfix` sink: records as IPFIX (RFC 7011) messages to a flow collector
//! (nfcapd, goflow2, pmacct...), over UDP or TCP, through a [`Spool`].
//!
//! The spool holds the contract's JSON lines; this destination parses each line
//! back and encodes it by hand (the wire format is small):
//!
//! | template | what | elements |
//! |---|---|---|
//! | 256 | `OK` record, IPv4 | [`FLOW_V4`] |
//! | 257 | `OK` record, IPv6 | [`FLOW_V6`] |
//! | 258 | `NODATA` record: the interface was watched and saw nothing | [`NODATA`] |
//! | 259 (options) | `SKIPDATA`: RFC 7011 §4.3 exporting process reliability statistics | [`SKIPDATA`] |
//!
//! Standard Information Elements are used where they exist; flowlog's own fields go
//! under a private enterprise number (default [`IpfixSettings::DEFAULT_ENTERPRISE_NUMBER`],
//! 32473, RFC 5612's number reserved for documentation: flowlog has no registration
//! of its own, and `enterprise_number` takes an operator's own PEN):
//! 1 traffic_path (unsigned8, 255 = `-`), 2 log-status (string), 3 eni-id,
//! 4 vm-id, 5 vswitch-id, 6 vpc-id, 7 account-id (strings), 8 record-id (unsigned64, 0
//! without `--record-format extended`).
//!
//! * **NODATA** becomes a data record of template 258 (window, interface, identity,
//!   no traffic elements), so a collector that keeps it sees the interface was
//!   watched; flow-only collectors (nfcapd) skip it, having no flow key in it.
//! * **SKIPDATA** becomes an options record of template 259, scoped to the exporting
//!   process (`exportingProcessId`, random per agent start) and the interface
//!   (`interfaceName`): `notSentFlowTotalCount`, `notSentPacketTotalCount`,
//!   `notSentOctetTotalCount` are, as RFC 7011 defines them, totals since the
//!   exporting process started (per interface); `flowStartSeconds` /
//!   `flowEndSeconds` give the window of the last skip.
//! * **Messages** stay under the path MTU (`mtu` minus 48 bytes of IPv6 + UDP
//!   headers, so a datagram is never fragmented); strings are cut at
//!   [`MAX_STRING`] bytes so that any record fits.
//! * **Sequence numbers**: one observation domain per sink; the header's sequence
//!   number counts the data records sent before the message in the transport
//!   session (RFC 7011 §3.1), options records included.
//! * **Templates**: over TCP once at the start of each connection (a new transport
//!   session: the sequence number restarts at 0); over UDP before the first message
//!   and again every `template_refresh`.
//! * **Times**: `flowStartSeconds`/`flowEndSeconds` as the contract has them, and
//!   the same instants as `flowStartMilliseconds`/`flowEndMilliseconds`, which
//!   collectors such as nfdump 1.7 read instead.
//! * **Interfaces**: `interfaceName` is the record's `eni-id` (by default the
//!   interface's name); `ingressInterface` (direction in) or `egressInterface`
//!   (direction out) is its ifindex when `eni-id` names a local interface, else 0.
//!
//! Delivery is at-least-once like the `tcp` sink: over TCP "delivered" means
//! written and flushed, and a chunk whose send failed is sent again on a new
//! connection (deduplicate by the record-id element). Over UDP a datagram the
//! kernel accepted counts as delivered; an ICMP error (nobody listening) fails the
//! send and the chunk is sent again.
//!
//! [`Spool`]: super::spool::Spool
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpStream, UdpSocket},
};

use super::spool::Deliver;

/// How an IPFIX sink reaches its collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// `[[sink]] type = "ipfix"`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpfixSettings {
    pub address: String,
    pub transport: Transport,
    pub template_refresh: Duration,
    pub mtu: u32,
    pub observation_domain: u32,
    pub enterprise_number: u32,
}

impl IpfixSettings {
    pub const DEFAULT_TEMPLATE_REFRESH: Duration = Duration::from_secs(60);
    pub const DEFAULT_MTU: u32 = 1500;
    /// IPv6's minimum link MTU.
    pub const MIN_MTU: u32 = 1280;
    pub const MAX_MTU: u32 = 65535;
    /// RFC 5612: "Example Enterprise Number for Documentation Use".
    pub const DEFAULT_ENTERPRISE_NUMBER: u32 = 32473;
}

/// IPv6 (40) + UDP (8) header bytes a message must leave room for under the MTU.
const IP_UDP_OVERHEAD: usize = 48;
/// Longest string element, bytes: 8 strings of this size still fit in a 1280 MTU.
pub const MAX_STRING: usize = 120;

pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
pub const TEMPLATE_NODATA: u16 = 258;
pub const TEMPLATE_SKIPDATA: u16 = 259;

const VARLEN: u16 = 0xffff;

/// One field specifier: (element id, length, enterprise).
type Field = (u16, u16, bool);

// Enterprise element ids under the configured PEN.
pub const E_TRAFFIC_PATH: u16 = 1;
pub const E_LOG_STATUS: u16 = 2;
pub const E_ENI_ID: u16 = 3;
pub const E_VM_ID: u16 = 4;
pub const E_VSWITCH_ID: u16 = 5;
pub const E_VPC_ID: u16 = 6;
pub const E_ACCOUNT_ID: u16 = 7;
pub const E_RECORD_ID: u16 = 8;

/// The enterprise elements every record ends with.
const IDENTITY: [Field; 8] = [
    (E_TRAFFIC_PATH, 1, true),
    (E_LOG_STATUS, VARLEN, true),
    (E_ENI_ID, VARLEN, true),
    (E_VM_ID, VARLEN, true),
    (E_VSWITCH_ID, VARLEN, true),
    (E_VPC_ID, VARLEN, true),
    (E_ACCOUNT_ID, VARLEN, true),
    (E_RECORD_ID, 8, true),
];

const fn flow(src: (u16, u16), dst: (u16, u16)) -> [Field; 25] {
    [
        (1, 8, false),         // octetDeltaCount
        (2, 8, false),         // packetDeltaCount
        (4, 1, false),         // protocolIdentifier
        (6, 2, false),         // tcpControlBits
        (7, 2, false),         // sourceTransportPort
        (src.0, src.1, false), // sourceIPv4Address / sourceIPv6Address
        (10, 4, false),        // ingressInterface
        (11, 2, false),        // destinationTransportPort
        (dst.0, dst.1, false), // destinationIPv4Address / destinationIPv6Address
        (14, 4, false),        // egressInterface
        (60, 1, false),        // ipVersion
        (61, 1, false),        // flowDirection
        (82, VARLEN, false),   // interfaceName
        (89, 1, false),        // forwardingStatus (reduced-size unsigned32)
        (150, 4, false),       // flowStartSeconds
        (151, 4, false),       // flowEndSeconds
        (152, 8, false),       // flowStartMilliseconds (the same instant)
        (153, 8, false),       // flowEndMilliseconds
        IDENTITY[0],
        IDENTITY[1],
        IDENTITY[2],
        IDENTITY[3],
        IDENTITY[4],
        IDENTITY[5],
        IDENTITY[6],
    ]
}

/// Template 256 (the record-id element is appended: see [`fields_of`]).
pub const FLOW_V4: [Field; 25] = flow((8, 4), (12, 4));
/// Template 257.
pub const FLOW_V6: [Field; 25] = flow((27, 16), (28, 16));
/// Template 258.
pub const NODATA: [Field; 11] = [
    (150, 4, false),
    (151, 4, false),
    (82, VARLEN, false),
    IDENTITY[0],
    IDENTITY[1],
    IDENTITY[2],
    IDENTITY[3],
    IDENTITY[4],
    IDENTITY[5],
    IDENTITY[6],
    IDENTITY[7],
];
/// Options template 259: two scope fields, then the statistics.
pub const SKIPDATA: [Field; 13] = [
    (144, 4, false),     // exportingProcessId (scope)
    (82, VARLEN, false), // interfaceName (scope)
    (166, 8, false),     // notSentFlowTotalCount
    (167, 8, false),     // notSentPacketTotalCount
    (168, 8, false),     // notSentOctetTotalCount
    (150, 4, false),     // flowStartSeconds: the window of the last skip
    (151, 4, false),     // flowEndSeconds
    IDENTITY[1],
    IDENTITY[2],
    IDENTITY[3],
    IDENTITY[4],
    IDENTITY[5],
    IDENTITY[6],
];
const SKIPDATA_SCOPE_FIELDS: u16 = 2;

/// forwardingStatus values (RFC 7270): Forwarded (unknown reason), Dropped (ACL deny).
pub const FORWARDED: u8 = 64;
pub const DROPPED_ACL: u8 = 130;

fn fields_of(template: u16) -> Vec<Field> {
    match template {
        TEMPLATE_V4 => FLOW_V4.iter().copied().chain([IDENTITY[7]]).collect(),
        TEMPLATE_V6 => FLOW_V6.iter().copied().chain([IDENTITY[7]]).collect(),
        TEMPLATE_NODATA => NODATA.to_vec(),
        _ => SKIPDATA.to_vec(),
    }
}

/// A record that cannot be encoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpfixError {
    #[error("not a JSON object")]
    NotJson,
    #[error("field {field:?} = {value:?} is not valid")]
    BadField { field: &'static str, value: String },
}

/// Running SKIPDATA totals of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Skipped {
    flows: u64,
    packets: u64,
    octets: u64,
}

/// The encoder: JSON lines in, IPFIX messages out. Holds the session state
/// (sequence number, template timing, SKIPDATA totals).
#[derive(Debug, Clone)]
pub struct Encoder {
    domain: u32,
    enterprise: u32,
    max_message: usize,
    process_id: u32,
    /// Data records sent in this transport session.
    pub sequence: u32,
    totals: HashMap<String, Skipped>,
    ifindex: HashMap<String, u32>,
}

fn text<'a>(m: &'a serde_json::Map<String, serde_json::Value>, f: &str) -> &'a str {
    m.get(f).and_then(|v| v.as_str()).unwrap_or("-")
}

fn num<T: std::str::FromStr>(
    m: &serde_json::Map<String, serde_json::Value>,
    field: &'static str,
) -> Result<T, IpfixError> {
    let v = text(m, field);
    v.parse().map_err(|_| IpfixError::BadField {
        field,
        value: v.to_string(),
    })
}

/// A port, or 0 where the protocol has none (`-`).
fn port(
    m: &serde_json::Map<String, serde_json::Value>,
    f: &'static str,
) -> Result<u16, IpfixError> {
    if text(m, f) == "-" {
        Ok(0)
    } else {
        num(m, f)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STRING);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

impl Encoder {
    pub fn new(settings: &IpfixSettings, process_id: u32) -> Self {
        Encoder {
            domain: settings.observation_domain,
            enterprise: settings.enterprise_number,
            max_message: settings.mtu as usize - IP_UDP_OVERHEAD,
            process_id,
            sequence: 0,
            totals: HashMap::new(),
            ifindex: HashMap::new(),
        }
    }

    fn header(&self, out: &mut Vec<u8>, export_time: u32) {
        out.extend_from_slice(&10u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes()); // length, set at the end
        out.extend_from_slice(&export_time.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.domain.to_be_bytes());
    }

    fn field_specs(&self, out: &mut Vec<u8>, fields: &[Field]) {
        for &(id, len, enterprise) in fields {
            let id = if enterprise { id | 0x8000 } else { id };
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            if enterprise {
                out.extend_from_slice(&self.enterprise.to_be_bytes());
            }
        }
    }

    /// One message with the three templates and the options template.
    pub fn templates(&self, export_time: u32) -> Vec<u8> {
        let mut m = Vec::new();
        self.header(&mut m, export_time);
        let start = m.len();
        m.extend_from_slice(&2u16.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        for t in [TEMPLATE_V4, TEMPLATE_V6, TEMPLATE_NODATA] {
            let f = fields_of(t);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&(f.len() as u16).to_be_bytes());
            self.field_specs(&mut m, &f);
        }
        let len = (m.len() - start) as u16;
        m[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        let start = m.len();
        m.extend_from_slice(&3u16.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&TEMPLATE_SKIPDATA.to_be_bytes());
        m.extend_from_slice(&(SKIPDATA.len() as u16).to_be_bytes());
        m.extend_from_slice(&SKIPDATA_SCOPE_FIELDS.to_be_bytes());
        self.field_specs(&mut m, &SKIPDATA);
        let len = (m.len() - start) as u16;
        m[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    fn ifindex_of(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ifindex.get(name) {
            return i;
        }
        let i = std::ffi::CString::new(name)
            .map(|c| {
                // SAFETY: `c` is a valid NUL-terminated string for the call.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            })
            .unwrap_or(0);
        self.ifindex.insert(name.to_string(), i);
        i
    }

    fn identity(
        &self,
        out: &mut Vec<u8>,
        m: &serde_json::Map<String, serde_json::Value>,
        with_path: bool,
    ) -> Result<(), IpfixError> {
        if with_path {
            out.push(match text(m, "traffic_path") {
                "-" => 255,
                _ => num::<u8>(m, "traffic_path")?,
            });
        }
        for f in [
            "log-status",
            "eni-id",
            "vm-id",
            "vswitch-id",
            "vpc-id",
            "account-id",
        ] {
            put_str(out, text(m, f));
        }
        Ok(())
    }

    fn record_id(m: &serde_json::Map<String, serde_json::Value>) -> Result<u64, IpfixError> {
        match m.get("record-id").and_then(|v| v.as_str()) {
            None => Ok(0),
            Some(v) => u64::from_str_radix(v, 16).map_err(|_| IpfixError::BadField {
                field: "record-id",
                value: v.to_string(),
            }),
        }
    }

    /// Encodes one JSON line as (template, record bytes). `totals` collects SKIPDATA.
    fn record(
        &mut self,
        line: &[u8],
        totals: &mut HashMap<String, Skipped>,
    ) -> Result<(u16, Vec<u8>), IpfixError> {
        let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(line) else {
            return Err(IpfixError::NotJson);
        };
        let mut r = Vec::with_capacity(160);
        let start: u32 = num(&m, "start")?;
        let end: u32 = num(&m, "end")?;
        let eni = text(&m, "eni-id").to_string();
        match text(&m, "log-status") {
            "NODATA" => {
                r.extend_from_slice(&start.to_be_bytes());
                r.extend_from_slice(&end.to_be_bytes());
                put_str(&mut r, &eni);
                self.identity(&mut r, &m, true)?;
                r.extend_from_slice(&Self::record_id(&m)?.to_be_bytes());
                Ok((TEMPLATE_NODATA, r))
            }
            "SKIPDATA" => {
                let t = totals.entry(eni.clone()).or_default();
                t.flows += num::<u64>(&m, "skipped-streams")?;
                t.packets += num::<u64>(&m, "skipped-packets")?;
                t.octets += num::<u64>(&m, "skipped-bytes")?;
                let t = *t;
                r.extend_from_slice(&self.process_id.to_be_bytes());
                put_str(&mut r, &eni);
                for v in [t.flows, t.packets, t.octets] {
                    r.extend_from_slice(&v.to_be_bytes());
                }
                r.extend_from_slice(&start.to_be_bytes());
                r.extend_from_slice(&end.to_be_bytes());
                self.identity(&mut r, &m, false)?;
                Ok((TEMPLATE_SKIPDATA, r))
            }
            _ => {
                let v6 = match text(&m, "type") {
                    "IPv4" => false,
                    "IPv6" => true,
                    other => {
                        return Err(IpfixError::BadField {
                            field: "type",
                            value: other.to_string(),
                        })
                    }
                };
                let addr = |f: &'static str| -> Result<IpAddr, IpfixError> {
                    let v = text(&m, f);
                    match v.parse::<IpAddr>() {
                        Ok(a) if a.is_ipv6() == v6 => Ok(a),
                        _ => Err(IpfixError::BadField {
                            field: f,
                            value: v.to_string(),
                        }),
                    }
                };
                let (src, dst) = (addr("srcaddr")?, addr("dstaddr")?);
                let push_addr = |r: &mut Vec<u8>, a: IpAddr| match a {
                    IpAddr::V4(a) => r.extend_from_slice(&a.octets()),
                    IpAddr::V6(a) => r.extend_from_slice(&a.octets()),
                };
                let dir_in = match text(&m, "direction") {
                    "in" => true,
                    "out" => false,
                    other => {
                        return Err(IpfixError::BadField {
                            field: "direction",
                            value: other.to_string(),
                        })
                    }
                };
                let forwarding = match text(&m, "action") {
                    "ACCEPT" => FORWARDED,
                    "REJECT" => DROPPED_ACL,
                    other => {
                        return Err(IpfixError::BadField {
                            field: "action",
                            value: other.to_string(),
                        })
                    }
                };
                let flags: u16 = match text(&m, "tcp-flags") {
                    "-" => 0,
                    _ => num(&m, "tcp-flags")?,
                };
                let ifindex = self.ifindex_of(&eni);
                r.extend_from_slice(&num::<u64>(&m, "bytes")?.to_be_bytes());
                r.extend_from_slice(&num::<u64>(&m, "packets")?.to_be_bytes());
                r.push(num::<u8>(&m, "protocol")?);
                r.extend_from_slice(&flags.to_be_bytes());
                r.extend_from_slice(&port(&m, "srcport")?.to_be_bytes());
                push_addr(&mut r, src);
                r.extend_from_slice(&(if dir_in { ifindex } else { 0 }).to_be_bytes());
                r.extend_from_slice(&port(&m, "dstport")?.to_be_bytes());
                push_addr(&mut r, dst);
                r.extend_from_slice(&(if dir_in { 0 } else { ifindex }).to_be_bytes());
                r.push(if v6 { 6 } else { 4 });
                r.push(if dir_in { 0 } else { 1 });
                put_str(&mut r, &eni);
                r.push(forwarding);
                r.extend_from_slice(&start.to_be_bytes());
                r.extend_from_slice(&end.to_be_bytes());
                r.extend_from_slice(&(u64::from(start) * 1000).to_be_bytes());
                r.extend_from_slice(&(u64::from(end) * 1000).to_be_bytes());
                self.identity(&mut r, &m, true)?;
                r.extend_from_slice(&Self::record_id(&m)?.to_be_bytes());
                Ok((if v6 { TEMPLATE_V6 } else { TEMPLATE_V4 }, r))
            }
        }
    }

    /// Encodes whole JSON lines into messages, each at most the MTU's worth, in the
    /// order of the lines. Advances the sequence number as if every message were sent
    /// (call [`Encoder::commit`] with the returned state once they were). Lines that
    /// cannot be encoded are returned with their error (they cannot come from the
    /// agent; they are skipped, never retried forever).
    pub fn encode(
        &mut self,
        lines: &[u8],
        export_time: u32,
    ) -> (Vec<Vec<u8>>, EncoderState, Vec<(String, IpfixError)>) {
        let mut messages = Vec::new();
        let mut bad = Vec::new();
        let mut totals = self.totals.clone();
        let mut sequence = self.sequence;
        let mut msg: Vec<u8> = Vec::new();
        let mut set_start = 0usize;
        let mut set_id = 0u16;
        let mut in_msg = 0u32;
        let close_set = |msg: &mut Vec<u8>, set_start: usize| {
            let len = (msg.len() - set_start) as u16;
            msg[set_start + 2..set_start + 4].copy_from_slice(&len.to_be_bytes());
        };
        let finish = |msg: &mut Vec<u8>, set_start: usize, messages: &mut Vec<Vec<u8>>| {
            close_set(msg, set_start);
            let len = msg.len() as u16;
            msg[2..4].copy_from_slice(&len.to_be_bytes());
            messages.push(std::mem::take(msg));
        };
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let (template, rec) = match self.record(line, &mut totals) {
                Ok(x) => x,
                Err(e) => {
                    bad.push((String::from_utf8_lossy(line).into_owned(), e));
                    continue;
                }
            };
            let need = rec.len() + if template == set_id { 0 } else { 4 };
            if !msg.is_empty() && msg.len() + need > self.max_message {
                finish(&mut msg, set_start, &mut messages);
                sequence = sequence.wrapping_add(in_msg);
                in_msg = 0;
            }
            if msg.is_empty() {
                let saved = self.sequence;
                self.sequence = sequence;
                self.header(&mut msg, export_time);
                self.sequence = saved;
                set_id = 0;
            }
            if template != set_id {
                if set_id != 0 {
                    close_set(&mut msg, set_start);
                }
                set_start = msg.len();
                msg.extend_from_slice(&template.to_be_bytes());
                msg.extend_from_slice(&0u16.to_be_bytes());
                set_id = template;
            }
            msg.extend_from_slice(&rec);
            in_msg += 1;
        }
        if !msg.is_empty() {
            finish(&mut msg, set_start, &mut messages);
            sequence = sequence.wrapping_add(in_msg);
        }
        (messages, EncoderState { sequence, totals }, bad)
    }

    /// Takes the state after a successful send.
    pub fn commit(&mut self, state: EncoderState) {
        self.sequence = state.sequence;
        self.totals = state.totals;
    }
}

/// The encoder's state after a chunk (see [`Encoder::encode`]).
#[derive(Debug, Clone)]
pub struct EncoderState {
    sequence: u32,
    totals: HashMap<String, Skipped>,
}

/// Data records in a message: for the sequence number after a partial UDP send.
fn records_in(msg: &[u8]) -> u32 {
    let mut n = 0;
    let mut at = 16;
    while at + 4 <= msg.len() {
        let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = u16::from_be_bytes([msg[at + 2], msg[at + 3]]) as usize;
        if len < 4 {
            break;
        }
        if id >= 256 {
            n += count_records(&msg[at + 4..at + len], &fields_of(id));
        }
        at += len;
    }
    n
}

fn count_records(mut data: &[u8], fields: &[Field]) -> u32 {
    let mut n = 0;
    'outer: while !data.is_empty() {
        let mut at = 0;
        for &(_, len, _) in fields {
            if len == VARLEN {
                let Some(&l) = data.get(at) else { break 'outer };
                at += 1 + l as usize;
            } else {
                at += len as usize;
            }
        }
        if at > data.len() {
            break;
        }
        data = &data[at..];
        n += 1;
    }
    n
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// Delivery of spooled lines to an IPFIX collector.
pub struct IpfixDeliver {
    settings: IpfixSettings,
    encoder: Encoder,
    conn: Option<Conn>,
    /// When the templates went last (UDP).
    templates_sent: Option<Instant>,
}

impl IpfixDeliver {
    pub fn new(settings: IpfixSettings) -> Self {
        // A fresh exporting process id per start: SKIPDATA totals restart with it.
        let process_id = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id().rotate_left(16))
            .unwrap_or(0);
        IpfixDeliver {
            encoder: Encoder::new(&settings, process_id),
            settings,
            conn: None,
            templates_sent: None,
        }
    }

    async fn connect(&mut self) -> io::Result<()> {
        if let Some(Conn::Tcp(s)) = &self.conn {
            if !super::tcp::peer_still_there(s) {
                self.conn = None;
            }
        }
        if self.conn.is_some() {
            return Ok(());
        }
        let addr: SocketAddr = tokio::net::lookup_host(&self.settings.address)
            .await?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
        self.conn = Some(match self.settings.transport {
            Transport::Udp => {
                let local: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                let s = UdpSocket::bind(local).await?;
                s.connect(addr).await?;
                Conn::Udp(s)
            }
            Transport::Tcp => {
                let s = match tokio::time::timeout(
                    super::tcp::CONNECT_TIMEOUT,
                    TcpStream::connect(addr),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => return Err(io::ErrorKind::TimedOut.into()),
                };
                s.set_nodelay(true)?;
                tracing::info!(destination = %self.describe(), "connected");
                // A new transport session.
                self.encoder.sequence = 0;
                Conn::Tcp(s)
            }
        });
        self.templates_sent = None;
        Ok(())
    }

    async fn send_chunk(&mut self, lines: &[u8]) -> io::Result<()> {
        self.connect().await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        let refresh = match self.settings.transport {
            Transport::Tcp => self.templates_sent.is_none(),
            Transport::Udp => self
                .templates_sent
                .is_none_or(|t| t.elapsed() >= self.settings.template_refresh),
        };
        let (messages, state, bad) = self.encoder.encode(lines, now);
        for (line, e) in &bad {
            tracing::warn!(destination = %self.describe(), error = %e, line = %line, "ipfix: a line that is not a record was skipped");
        }
        let templates = refresh.then(|| self.encoder.templates(now));
        match self.conn.as_mut().expect("connected above") {
            Conn::Tcp(s) => {
                let mut all = templates.unwrap_or_default();
                for m in &messages {
                    all.extend_from_slice(m);
                }
                s.write_all(&all).await?;
                s.flush().await?;
            }
            Conn::Udp(s) => {
                if let Some(t) = templates {
                    s.send(&t).await?;
                }
                for (i, m) in messages.iter().enumerate() {
                    if let Err(e) = s.send(m).await {
                        // The sequence number counts what was sent.
                        let sent: u32 = messages[..i].iter().map(|m| records_in(m)).sum();
                        self.encoder.sequence = self.encoder.sequence.wrapping_add(sent);
                        // Templates again with the retry.
                        self.templates_sent = None;
                        return Err(e);
                    }
                }
            }
        }
        if refresh {
            self.templates_sent = Some(Instant::now());
        }
        self.encoder.commit(state);
        Ok(())
    }
}

impl Deliver for IpfixDeliver {
    fn send<'a>(
        &'a mut self,
        lines: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>> {
        Box::pin(async move {
            let result = self.send_chunk(lines).await;
            if result.is_err() {
                // TCP: a new connection (session). UDP: a new socket, the address
                // resolved again, the templates sent again.
                self.conn = None;
            }
            result
        })
    }

    fn describe(&self) -> String {
        let t = match self.settings.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        format!("ipfix+{t}://{}", self.settings.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mtu: u32) -> IpfixSettings {
        IpfixSettings {
            address: "127.0.0.1:4739".into(),
            transport: Transport::Udp,
            template_refresh: Duration::from_secs(60),
            mtu,
            observation_domain: 7,
            enterprise_number: 32473,
        }
    }

    const V4: &str = r#"{"version":"1","account-id":"acc","eni-id":"eni-1","vm-id":"i-1","vswitch-id":"vsw-1","vpc-id":"vpc-1","type":"IPv4","protocol":"6","srcaddr":"10.0.0.1","srcport":"40000","dstaddr":"10.0.0.2","dstport":"80","direction":"out","action":"REJECT","packets":"10","bytes":"2048","start":"1720775420","end":"1720775480","tcp-flags":"18","log-status":"OK","traffic_path":"3","record-id":"00000000000000ff"}"#;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn one_ipv4_record_is_laid_out_field_by_field() {
        let mut e = Encoder::new(&settings(1500), 9);
        let (msgs, state, bad) = e.encode(format!("{V4}\n").as_bytes(), 1000);
        assert!(bad.is_empty());
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(u16_at(m, 0), 10);
        assert_eq!(u16_at(m, 2) as usize, m.len());
        assert_eq!(u32_at(m, 4), 1000);
        assert_eq!(u32_at(m, 8), 0, "first message: sequence 0");
        assert_eq!(u32_at(m, 12), 7, "observation domain");
        assert_eq!(u16_at(m, 16), TEMPLATE_V4);
        assert_eq!(u16_at(m, 18) as usize, m.len() - 16);
        let r = &m[20..];
        assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), 2048);
        assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), 10);
        assert_eq!(r[16], 6);
        assert_eq!(u16_at(r, 17), 18);
        assert_eq!(u16_at(r, 19), 40000);
        assert_eq!(&r[21..25], &[10, 0, 0, 1]);
        assert_eq!(u32_at(r, 25), 0, "ingressInterface of an out record");
        assert_eq!(u16_at(r, 29), 80);
        assert_eq!(&r[31..35], &[10, 0, 0, 2]);
        // egressInterface: eni-1 is no local interface.
        assert_eq!(u32_at(r, 35), 0);
        assert_eq!((r[39], r[40]), (4, 1));
        assert_eq!(&r[41..47], b"\x05eni-1");
        assert_eq!(r[47], DROPPED_ACL);
        assert_eq!(u32_at(r, 48), 1720775420);
        assert_eq!(u32_at(r, 52), 1720775480);
        assert_eq!(
            u64::from_be_bytes(r[56..64].try_into().unwrap()),
            1720775420000
        );
        assert_eq!(
            u64::from_be_bytes(r[64..72].try_into().unwrap()),
            1720775480000
        );
        assert_eq!(r[72], 3, "traffic_path");
        assert_eq!(&r[73..76], b"\x02OK");
        assert_eq!(
            &r[76..r.len() - 8],
            b"\x05eni-1\x03i-1\x05vsw-1\x05vpc-1\x03acc"
        );
        assert_eq!(
            u64::from_be_bytes(r[r.len() - 8..].try_into().unwrap()),
            255
        );
        e.commit(state);
        assert_eq!(e.sequence, 1);
        let (msgs, _, _) = e.encode(format!("{V4}\n").as_bytes(), 1000);
        assert_eq!(u32_at(&msgs[0], 8), 1, "sequence counts earlier records");
    }

    #[test]
    fn messages_stay_under_the_mtu_and_sequence_numbers_add_up() {
        let mut e = Encoder::new(&settings(1280), 9);
        let lines = format!("{V4}\n").repeat(100);
        let (msgs, state, _) = e.encode(lines.as_bytes(), 1);
        assert!(msgs.len() > 1);
        let mut seq = 0;
        let mut total = 0;
        for m in &msgs {
            assert!(m.len() <= 1280 - 48, "{}", m.len());
            assert_eq!(u32_at(m, 8), seq);
            let n = records_in(m);
            seq += n;
            total += n;
        }
        assert_eq!(total, 100);
        e.commit(state);
        assert_eq!(e.sequence, 100);
    }

    #[test]
    fn templates_describe_the_records() {
        let e = Encoder::new(&settings(1500), 9);
        let t = e.templates(5);
        assert_eq!(u16_at(&t, 2) as usize, t.len());
        assert!(t.len() <= 1500 - 48);
        assert_eq!(u16_at(&t, 16), 2, "template set");
        let set_len = u16_at(&t, 18) as usize;
        assert_eq!(u16_at(&t, 20), TEMPLATE_V4);
        assert_eq!(u16_at(&t, 22), 26, "field count");
        let opt = 16 + set_len;
        assert_eq!(u16_at(&t, opt), 3, "options template set");
        assert_eq!(u16_at(&t, opt + 4), TEMPLATE_SKIPDATA);
        assert_eq!(u16_at(&t, opt + 6), 13);
        assert_eq!(u16_at(&t, opt + 8), 2, "scope fields");
        assert_eq!(opt + u16_at(&t, opt + 2) as usize, t.len());
    }

    #[test]
    fn skipdata_totals_grow_only_when_committed_and_bad_lines_are_skipped() {
        let skip = r#"{"eni-id":"eth0","start":"10","end":"20","log-status":"SKIPDATA","skipped-streams":"3","skipped-packets":"30","skipped-bytes":"3000"}"#;
        let nodata =
            r#"{"eni-id":"eth0","start":"10","end":"20","log-status":"NODATA","traffic_path":"-"}"#;
        let mut e = Encoder::new(&settings(1500), 0xabcd);
        let input = format!("{skip}\nnot json\n{nodata}\n");
        let (msgs, state, bad) = e.encode(input.as_bytes(), 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].1, IpfixError::NotJson);
        assert_eq!(records_in(&msgs[0]), 2);
        // Not committed (the send failed): the retry encodes the same totals.
        let (again, state2, _) = e.encode(input.as_bytes(), 1);
        assert_eq!(again, msgs);
        e.commit(state);
        let (third, _, _) = e.encode(format!("{skip}\n").as_bytes(), 1);
        let r = &third[0][20..];
        assert_eq!(u32_at(r, 0), 0xabcd);
        assert_eq!(&r[4..9], b"\x04eth0");
        assert_eq!(u64::from_be_bytes(r[9..17].try_into().unwrap()), 6);
        assert_eq!(u64::from_be_bytes(r[17..25].try_into().unwrap()), 60);
        assert_eq!(u64::from_be_bytes(r[25..33].try_into().unwrap()), 6000);
        drop(state2);
        let (_, _, bad) = e.encode(V4.replace("\"6\"", "\"x\"").as_bytes(), 1);
        assert_eq!(
            bad[0].1,
            IpfixError::BadField {
                field: "protocol",
                value: "x".into()
            }
        );
    }

    #[test]
    fn long_strings_are_cut_so_that_any_record_fits() {
        let long = "é".repeat(200);
        let line = V4.replace("vpc-1", &long).replace("i-1", &long);
        let mut e = Encoder::new(&settings(1280), 0);
        let (msgs, _, bad) = e.encode(format!("{line}\n").as_bytes(), 1);
        assert!(bad.is_empty());
        assert_eq!(records_in(&msgs[0]), 1);
        assert!(msgs[0].len() <= 1232);
    }

    /// Over UDP: templates before the first message and again once
    /// `template_refresh` passed; the sequence number runs on across datagrams.
    #[tokio::test]
    async fn over_udp_templates_are_refreshed() {
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = rx.local_addr().unwrap().to_string();
        let mut d = IpfixDeliver::new(IpfixSettings {
            address: addr.clone(),
            template_refresh: Duration::from_millis(300),
            ..settings(1500)
        });
        assert_eq!(d.describe(), format!("ipfix+udp://{addr}"));
        let line = format!("{V4}\n{V4}\n");
        d.send(line.as_bytes()).await.unwrap();
        d.send(line.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        d.send(line.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        for _ in 0..5 {
            let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                .await
                .expect("a datagram")
                .unwrap();
            got.push((u16_at(&buf, 16), u32_at(&buf, 8), records_in(&buf[..n])));
        }
        assert_eq!(
            got,
            [
                (2, 0, 0),
                (TEMPLATE_V4, 0, 2),
                (TEMPLATE_V4, 2, 2),
                (2, 4, 0),
                (TEMPLATE_V4, 4, 2),
            ],
            "(first set, sequence, data records) per datagram"
        );
    }

    #[tokio::test]
    async fn over_tcp_templates_come_first_on_every_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut d = IpfixDeliver::new(IpfixSettings {
            address: addr.clone(),
            transport: Transport::Tcp,
            ..settings(1500)
        });
        assert_eq!(d.describe(), format!("ipfix+tcp://{addr}"));
        let line = format!("{V4}\n");
        let send = d.send(line.as_bytes());
        let (r, accepted) = tokio::join!(send, listener.accept());
        r.unwrap();
        let (mut s, _) = accepted.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while got.len() < 2 || got.len() < u16_at(&got, 2) as usize + 20 {
            let n = s.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        let t_len = u16_at(&got, 2) as usize;
        assert_eq!(u16_at(&got, 16), 2, "templates first");
        assert_eq!(u16_at(&got, t_len + 16), TEMPLATE_V4);
        assert_eq!(u32_at(&got, t_len + 8), 0);
    }
}
