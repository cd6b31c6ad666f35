//! Per-instance windows over the kernel's capture ticks.
//!
//! The kernel captures at one tick for the whole node: the greatest common divisor of
//! the windows of the active instances (the shortest window for the contract's 1, 5
//! and 10 minutes, as the cloud does). At every tick the agent drains the flow map
//! once; each stream goes to the instances whose members include its interface and
//! whose filters (IP version, transfer type, paths) want it:
//!
//! - an instance whose window ends at this tick and has nothing accumulated renders
//!   the stream straight away (the common case of one window: no copy);
//! - otherwise the stream is merged into the instance's accumulator (packets and
//!   bytes summed, flags OR'd, first/last times kept), rendered at its boundary.
//!
//! Members carry their own life: an interface that joins mid-window starts there, one
//! that disappears ends there (its partial window is rendered at the instance's next
//! boundary, with `end` = the time it went), and a member that comes back with a new
//! ifindex is a new member: records for each life.
use std::collections::{BTreeMap, HashMap};

use flowlog_common::{FlowKey, FlowStats, SkipStats};

use super::FlowLogSpec;
use crate::record::{InterfaceMeta, Record, RecordFormat};

/// Appends fields to a rendered OK record (the line, ending in `}\n`) of a stream.
pub type ExtraFields<'a> = dyn Fn(&mut Vec<u8>, &FlowKey) + 'a;

/// How records are rendered (shared by every instance).
#[derive(Clone, Copy)]
pub struct Render<'a> {
    pub format: RecordFormat,
    /// This agent (and flow log) in record ids.
    pub id_scope: &'a str,
    /// `unix_ns - monotonic_ns` for the kernel's time stamps.
    pub mono_to_unix: i128,
    pub extra: Option<&'a ExtraFields<'a>>,
}

pub fn to_unix_secs(mono_ns: u64, offset: i128) -> u64 {
    let unix = mono_ns as i128 + offset;
    if unix <= 0 {
        0
    } else {
        (unix / 1_000_000_000) as u64
    }
}

/// Renders the OK record of one stream in the window `start_s..=end_s`.
pub fn render_stream(
    out: &mut Vec<u8>,
    r: &Render<'_>,
    meta: &InterfaceMeta,
    key: &FlowKey,
    stats: &FlowStats,
    start_s: u64,
    end_s: u64,
) {
    let start = to_unix_secs(stats.first_ns, r.mono_to_unix).clamp(start_s, end_s);
    let end = if stats.closed != 0 {
        to_unix_secs(stats.last_ns, r.mono_to_unix).clamp(start, end_s)
    } else {
        end_s
    };
    let record = Record::Flow {
        meta,
        key: *key,
        stats: *stats,
        start,
        end,
    };
    record.write_json_as(out, r.format);
    if r.format == RecordFormat::Extended {
        record.push_record_id(out, r.id_scope);
    }
    if let Some(extra) = r.extra {
        extra(out, key);
    }
}

/// Renders the SKIPDATA record of an interface, or NODATA when `skipped` is `None`.
pub fn render_status(
    out: &mut Vec<u8>,
    r: &Render<'_>,
    meta: &InterfaceMeta,
    skipped: Option<SkipStats>,
    start: u64,
    end: u64,
) {
    let record = match skipped {
        Some(skipped) => Record::SkipData {
            meta,
            start,
            end,
            skipped,
        },
        None => Record::NoData { meta, start, end },
    };
    record.write_json_as(out, r.format);
    if r.format == RecordFormat::Extended {
        record.push_record_id(out, r.id_scope);
    }
}

/// Adds `b` (a later tick) to `a`.
pub fn merge(a: &mut FlowStats, b: &FlowStats) {
    a.packets += b.packets;
    a.bytes += b.bytes;
    a.first_ns = a.first_ns.min(b.first_ns);
    a.tcp_flags |= b.tcp_flags;
    // The latest tick says whether the stream is closed (a reopened stream is open).
    a.closed = b.closed;
    a.last_ns = a.last_ns.max(b.last_ns);
    a.rule_id = b.rule_id;
}

/// One interface of an instance in the current window.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub meta: InterfaceMeta,
    /// Unix ns it joined (the window start if it was there already).
    pub joined_ns: u64,
    /// Unix ns it disappeared or left the instance.
    pub gone_ns: Option<u64>,
    /// It had traffic in the window (even if the filters hid it): no NODATA.
    active: bool,
    skipped: Option<SkipStats>,
}

impl Member {
    pub fn new(name: String, meta: InterfaceMeta, joined_ns: u64) -> Self {
        Self {
            name,
            meta,
            joined_ns,
            gone_ns: None,
            active: false,
            skipped: None,
        }
    }
}

/// An instance's current window.
#[derive(Debug, Default)]
pub struct InstanceWindow {
    /// Unix ns the window started.
    pub start_ns: u64,
    pub members: BTreeMap<u32, Member>,
    pending: HashMap<FlowKey, FlowStats>,
    /// Records rendered since the instance started.
    pub records: u64,
}

/// What rendering one window gave.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rendered {
    pub records: usize,
    pub skipped: SkipStats,
}

impl InstanceWindow {
    pub fn new(start_ns: u64) -> Self {
        Self {
            start_ns,
            ..Default::default()
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A drained stream of one of the members. With `direct`, renders it into `out`
    /// now (the window ends at `end_ns` and nothing is accumulated); otherwise
    /// accumulates it. Returns whether a record was rendered.
    #[allow(clippy::too_many_arguments)]
    pub fn stream(
        &mut self,
        spec: &FlowLogSpec,
        key: &FlowKey,
        stats: &FlowStats,
        direct: Option<(&mut Vec<u8>, &Render<'_>, u64)>,
    ) -> bool {
        let Some(m) = self.members.get_mut(&key.ifindex) else {
            return false;
        };
        m.active = true;
        if !spec.wants(key.family, key.action, key.traffic_path) {
            return false;
        }
        match direct {
            Some((out, r, end_ns)) => {
                let (start_s, end_s) = member_span(m, self.start_ns, end_ns);
                render_stream(out, r, &m.meta, key, stats, start_s, end_s);
                self.records += 1;
                true
            }
            None => {
                self.pending
                    .entry(*key)
                    .and_modify(|a| merge(a, stats))
                    .or_insert(*stats);
                false
            }
        }
    }

    /// Skip counters of a member for the tick.
    pub fn skipped(&mut self, ifindex: u32, s: &SkipStats) {
        if let Some(m) = self.members.get_mut(&ifindex) {
            m.skipped.get_or_insert_with(SkipStats::default).merge(s);
        }
    }

    /// Ends the window at `end_ns`: renders what accumulated, SKIPDATA for members
    /// that overflowed, NODATA for members without traffic; drops members that are
    /// gone, and starts the next window at `end_ns`.
    pub fn finish(&mut self, out: &mut Vec<u8>, r: &Render<'_>, end_ns: u64) -> Rendered {
        let mut done = Rendered::default();
        for (key, stats) in self.pending.drain() {
            let Some(m) = self.members.get(&key.ifindex) else {
                continue;
            };
            let (start_s, end_s) = member_span(m, self.start_ns, end_ns);
            render_stream(out, r, &m.meta, &key, &stats, start_s, end_s);
            done.records += 1;
        }
        for m in self.members.values_mut() {
            let (start_s, end_s) = member_span(m, self.start_ns, end_ns);
            if let Some(s) = m.skipped.take() {
                done.skipped.merge(&s);
                render_status(out, r, &m.meta, Some(s), start_s, end_s);
                done.records += 1;
            } else if !m.active {
                render_status(out, r, &m.meta, None, start_s, end_s);
                done.records += 1;
            }
            m.active = false;
            m.joined_ns = end_ns;
        }
        self.members.retain(|_, m| m.gone_ns.is_none());
        self.start_ns = end_ns;
        self.records += done.records as u64;
        done
    }
}

/// A member's part of the window, in unix seconds.
fn member_span(m: &Member, start_ns: u64, end_ns: u64) -> (u64, u64) {
    let start = m.joined_ns.max(start_ns) / 1_000_000_000;
    let end = m.gone_ns.map_or(end_ns, |g| g.min(end_ns)) / 1_000_000_000;
    (start, end.max(start))
}

#[cfg(test)]
mod tests {
    use flowlog_common::{action, direction, family, key_flags, TRAFFIC_PATH_UNCLASSIFIED};

    use super::*;
    use crate::instance::{Checks, FlowLogFile};

    const S: u64 = 1_000_000_000;

    fn spec(extra: impl FnOnce(&mut FlowLogFile)) -> FlowLogSpec {
        let mut f = FlowLogFile {
            name: "t".into(),
            resource_type: "VPC".into(),
            ..Default::default()
        };
        extra(&mut f);
        let c = Checks {
            interface_exists: None,
            bridge_exists: &|_| true,
            paths_configured: true,
            sinks: &[],
        };
        FlowLogSpec::validate(&f, &c).unwrap().0
    }

    fn key(ifindex: u32, sport: u16, fam: u8) -> FlowKey {
        FlowKey {
            ifindex,
            src_addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: sport,
            dst_port: 80,
            protocol: 17,
            family: fam,
            direction: direction::OUT,
            action: action::ACCEPT,
            flags: key_flags::PORTS,
            traffic_path: TRAFFIC_PATH_UNCLASSIFIED,
            _pad: [0; 2],
        }
    }

    fn stats(packets: u64, first_s: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes: packets * 100,
            first_ns: first_s * S,
            last_ns: first_s * S,
            ..Default::default()
        }
    }

    fn lines(buf: &[u8]) -> Vec<serde_json::Map<String, serde_json::Value>> {
        std::str::from_utf8(buf)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn meta(name: &str) -> InterfaceMeta {
        InterfaceMeta {
            eni_id: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ticks_accumulate_into_the_instance_window() {
        let r = Render {
            format: RecordFormat::Base,
            id_scope: "a",
            mono_to_unix: 0,
            extra: None,
        };
        let sp = spec(|f| f.ip_version = Some("IPv4".into()));
        let mut w = InstanceWindow::new(100 * S);
        w.members
            .insert(2, Member::new("a".into(), meta("a"), 100 * S));
        w.members
            .insert(3, Member::new("b".into(), meta("b"), 100 * S));
        // Member c joins at 103 s and leaves at 104 s without traffic.
        let mut c = Member::new("c".into(), meta("c"), 103 * S);
        c.gone_ns = Some(104 * S);
        w.members.insert(4, c);
        // Three ticks: the same stream twice, an IPv6 stream (not wanted: no record,
        // but the member had traffic), a stream of an unknown interface (ignored).
        assert!(!w.stream(&sp, &key(2, 1, family::IPV4), &stats(3, 101), None));
        assert!(!w.stream(&sp, &key(2, 1, family::IPV4), &stats(4, 103), None));
        assert!(!w.stream(&sp, &key(3, 1, family::IPV6), &stats(1, 102), None));
        assert!(!w.stream(&sp, &key(9, 1, family::IPV4), &stats(1, 102), None));
        let mut out = Vec::new();
        let done = w.finish(&mut out, &r, 106 * S);
        assert_eq!(done.records, 2);
        let recs = lines(&out);
        assert_eq!(recs[0]["eni-id"], "a");
        assert_eq!(recs[0]["packets"], "7");
        assert_eq!(recs[0]["bytes"], "700");
        assert_eq!(
            (recs[0]["start"].as_str(), recs[0]["end"].as_str()),
            (Some("101"), Some("106"))
        );
        assert_eq!(recs[1]["eni-id"], "c");
        assert_eq!(recs[1]["log-status"], "NODATA");
        assert_eq!(
            (recs[1]["start"].as_str(), recs[1]["end"].as_str()),
            (Some("103"), Some("104"))
        );
        // The gone member is dropped; the next window starts at 106.
        assert_eq!(w.members.len(), 2);
        assert_eq!(w.start_ns, 106 * S);
        // Direct rendering at a boundary with nothing accumulated.
        let mut out = Vec::new();
        assert!(w.stream(
            &sp,
            &key(2, 5, family::IPV4),
            &stats(1, 107),
            Some((&mut out, &r, 112 * S))
        ));
        assert_eq!(lines(&out)[0]["srcport"], "5");
    }

    #[test]
    fn ok_skip_nodata_records_and_their_times() {
        // Boot time 0 == unix 1000 s.
        let r = Render {
            format: RecordFormat::Base,
            id_scope: "a",
            mono_to_unix: 1_000_000_000_000,
            extra: None,
        };
        let sp = spec(|_| {});
        let mut w = InstanceWindow::new(1004 * S);
        for (i, n) in [(2, "a"), (3, "b"), (4, "c")] {
            w.members
                .insert(i, Member::new(n.into(), meta(n), 1004 * S));
        }
        let open = FlowStats {
            packets: 3,
            bytes: 180,
            first_ns: 5_500_000_000, // unix 1005.5
            last_ns: 9_000_000_000,
            tcp_flags: 0x18,
            ..Default::default()
        };
        let closed = FlowStats {
            first_ns: 2_000_000_000, // before the window start: clamped
            last_ns: 7_200_000_000,  // unix 1007
            tcp_flags: 0x11,
            closed: 1,
            ..open
        };
        let mut out = Vec::new();
        let end = 1010 * S;
        assert!(w.stream(
            &sp,
            &key(2, 2000, family::IPV4),
            &closed,
            Some((&mut out, &r, end))
        ));
        assert!(w.stream(
            &sp,
            &key(2, 1000, family::IPV4),
            &open,
            Some((&mut out, &r, end))
        ));
        w.skipped(
            3,
            &SkipStats {
                streams: 2,
                packets: 5,
                bytes: 500,
                uncounted_stream_packets: 0,
            },
        );
        assert_eq!(w.finish(&mut out, &r, end).records, 2);
        let recs = lines(&out);
        let get = |i: usize, k: &str| recs[i][k].as_str().unwrap().to_owned();
        // The closed stream ends at its last packet, the open one at the window end; a
        // first packet before the window start is clamped.
        assert_eq!(get(0, "srcport"), "2000");
        assert_eq!(
            (get(0, "start"), get(0, "end")),
            ("1004".into(), "1007".into())
        );
        assert_eq!(get(1, "srcport"), "1000");
        assert_eq!(
            (get(1, "start"), get(1, "end")),
            ("1005".into(), "1010".into())
        );
        assert_eq!(get(2, "log-status"), "SKIPDATA");
        assert_eq!(get(2, "eni-id"), "b");
        assert_eq!(get(2, "skipped-packets"), "5");
        assert_eq!(get(3, "log-status"), "NODATA");
        assert_eq!(get(3, "eni-id"), "c");
        assert_eq!(
            (get(3, "start"), get(3, "end")),
            ("1004".into(), "1010".into())
        );
        assert_eq!(w.records, 4);
    }
}
