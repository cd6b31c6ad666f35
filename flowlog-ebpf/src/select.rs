//! Which new streams get a flow-table entry, and their traffic_path.
//!
//! Decided once per stream, when its entry would be made (never on the per-packet
//! path of an existing stream): `IFACES[ifindex]` says what the active flow logs on the
//! interface select (IP version, verdict, traffic paths, the union over instances);
//! `PATH_RULES` (first match wins) classify the stream by the interface's role, the
//! direction and the address sets (`PATH_CIDRS`, an LPM trie whose value is the bitmap
//! of sets containing the peer address). A stream nothing selects makes no entry and
//! its packets are counted in `COUNTERS[NOT_SELECTED]`.
use aya_ebpf::{
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie},
};
use flowlog_common::{
    action, config, direction, family, select, IfaceConf, PathCidrKey, PathRule,
    TRAFFIC_PATH_UNCLASSIFIED,
};

use crate::prog::{Parsed, CONFIG};

#[map(name = "IFACES")]
pub(crate) static IFACES: HashMap<u32, IfaceConf> = HashMap::with_max_entries(4096, 0);
#[map(name = "PATH_RULES")]
pub(crate) static PATH_RULES: Array<PathRule> = Array::with_max_entries(select::MAX_PATH_RULES, 0);
#[map(name = "PATH_CIDRS")]
pub(crate) static PATH_CIDRS: LpmTrie<PathCidrKey, u64> =
    LpmTrie::with_max_entries(select::MAX_PATH_CIDRS, 0);

/// The traffic_path of a new stream, or `None` when no active flow log on its
/// interface selects it.
#[inline(always)]
pub(crate) fn select(p: &Parsed) -> Option<u8> {
    // SAFETY: read-only copy of a value the agent replaces whole.
    let conf = match unsafe { IFACES.get(&p.key.ifindex) } {
        Some(c) => *c,
        None => IfaceConf {
            paths: select::ALL_PATHS,
            select: select::ALL,
            role: 0,
            _pad: [0; 2],
        },
    };
    let want = (if p.key.family == family::IPV4 {
        select::IPV4
    } else {
        select::IPV6
    }) | (if p.key.action == action::ACCEPT {
        select::ACCEPT
    } else {
        select::REJECT
    });
    if conf.select & want != want {
        return None;
    }
    let path = classify(p, conf.role);
    if conf.paths == select::ALL_PATHS {
        return Some(path);
    }
    if path < 32 && conf.paths & (1u32 << path) != 0 {
        Some(path)
    } else {
        None
    }
}

#[inline(never)]
fn classify(p: &Parsed, role: u8) -> u8 {
    let count = match CONFIG.get(config::PATH_RULE_COUNT) {
        Some(n) => *n,
        None => 0,
    };
    if count == 0 {
        return TRAFFIC_PATH_UNCLASSIFIED;
    }
    let peer = if p.key.direction == direction::OUT {
        p.key.dst_addr
    } else {
        p.key.src_addr
    };
    let bits = if p.key.family == family::IPV4 {
        32
    } else {
        128
    };
    let key = LpmKey::new(
        select::PATH_KEY_PREFIX_BITS + bits,
        PathCidrKey {
            family: p.key.family as u32,
            addr: peer,
        },
    );
    let sets = match PATH_CIDRS.get(&key) {
        Some(s) => *s,
        None => 0,
    };
    let mut walk = PathWalk {
        sets,
        role,
        direction: p.key.direction,
        found: 0,
        path: 0,
    };
    // bpf_loop: the verifier checks the callback once instead of every unrolled
    // iteration on every parse path.
    // SAFETY: `path_step` has the callback signature bpf_loop expects and `walk`
    // outlives the call.
    unsafe {
        bpf_loop(
            count.min(select::MAX_PATH_RULES),
            path_step as *const () as *mut c_void,
            &mut walk as *mut PathWalk as *mut c_void,
            0,
        )
    };
    if walk.found != 0 {
        walk.path
    } else {
        0
    }
}

#[repr(C)]
struct PathWalk {
    sets: u64,
    role: u8,
    direction: u8,
    found: u8,
    path: u8,
}

/// One step of the path rules: returns 1 (stop) at the first matching rule.
extern "C" fn path_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given in `classify`.
    let w = unsafe { &mut *(ctx as *mut PathWalk) };
    let Some(r) = PATH_RULES.get(i) else {
        return 1;
    };
    let role_ok = r.role == select::ANY || r.role == w.role;
    let dir_ok = r.direction == select::ANY || r.direction == w.direction;
    let set_ok = r.set == select::ANY || (r.set < 64 && w.sets & (1u64 << r.set) != 0);
    if role_ok && dir_ok && set_ok {
        w.found = 1;
        w.path = r.path;
        return 1;
    }
    0
}
