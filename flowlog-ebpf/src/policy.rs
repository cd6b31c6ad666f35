//! Security policy in the kernel: per interface a binding to a rule set; an LPM trie
//! gives the rules whose CIDR contains the peer; the first of them (priority order)
//! whose protocol and port match decides, else the direction's default. Stateful
//! sets track connections (LRU) so that replies are accepted; stateless verdicts are
//! remembered per CPU for the policy epoch. The maps hold two generations switched by
//! `CONFIG[POLICY_EPOCH]` (the agent writes the inactive one): bindings keyed by
//! interface and generation, generation `g`'s rule sets numbered from
//! `g * MAX_RULE_SETS` (see `flowlog_common::policy`), so every lookup names one map
//! the verifier knows (and inlines where it can).
use aya_ebpf::{
    cty::c_void,
    helpers::generated::bpf_loop,
    macros::map,
    maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use flowlog_common::{
    action, counter, direction, key_flags, policy, BindingKey, CidrKey, CtKey, CtValue, FlowKey,
    PolicyBinding, Rule,
};

use crate::prog::{bump, Parsed, CONFIG};

#[map(name = "POL_BIND")]
pub(crate) static POL_BIND: HashMap<BindingKey, PolicyBinding> =
    HashMap::with_max_entries(2 * policy::MAX_BINDINGS, 0);
#[map(name = "POL_CIDR")]
pub(crate) static POL_CIDR: LpmTrie<CidrKey, u64> =
    LpmTrie::with_max_entries(2 * policy::MAX_CIDRS, 0);
#[map(name = "POL_RULE")]
pub(crate) static POL_RULE: Array<Rule> =
    Array::with_max_entries(2 * policy::MAX_RULE_SETS * policy::MAX_RULES, 0);
#[map(name = "CONNTRACK")]
pub(crate) static CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(policy::MAX_TRACKED, 0);

/// Evaluates the security policy for the parsed packet: sets the verdict in its key
/// and the deciding rule; returns true when the packet must be dropped (enforce).
#[inline(always)]
pub(crate) fn decide(p: &mut Parsed) -> bool {
    // No rule set bound anywhere: skip the binding lookup.
    if CONFIG
        .get(flowlog_common::config::POLICY_BOUND)
        .is_none_or(|n| *n == 0)
    {
        p.rule_id = policy::RULE_NONE;
        return false;
    }
    let epoch = match CONFIG.get(flowlog_common::config::POLICY_EPOCH) {
        Some(e) => *e,
        None => 0,
    };
    let g = epoch & 1;
    let bk = BindingKey {
        ifindex: p.key.ifindex,
        generation: g,
    };
    // SAFETY: read-only use of a value the agent writes only in the inactive generation.
    let Some(b) = (unsafe { POL_BIND.get(&bk) }) else {
        p.rule_id = policy::RULE_NONE;
        return false;
    };
    let b = *b;
    let dir = p.key.direction;
    let stateful = b.flags & policy::FLAG_STATEFUL != 0;
    let enforce = b.flags & policy::FLAG_ENFORCE != 0;
    let ct = if stateful { Some(ct_key(&p.key)) } else { None };
    if let Some(ct) = &ct {
        if let Some(v) = CONNTRACK.get_ptr_mut(ct) {
            // SAFETY: value pointer returned by the map for this key.
            let v = unsafe { &mut *v };
            if v.epoch != epoch {
                // Re-judge the connection by its opening packet's direction.
                let swap = v.opened != dir;
                if swap {
                    reverse(&mut p.key);
                }
                let (verdict, rule_id) = match_rules(&p.key, &b);
                if swap {
                    reverse(&mut p.key);
                }
                v.epoch = epoch;
                v.action = verdict;
                v.rule_id = rule_id;
            }
            p.key.action = v.action;
            p.rule_id = if v.opened == dir {
                v.rule_id
            } else {
                policy::RULE_TRACKED
            };
            if v.action == action::ACCEPT {
                return false;
            }
            bump(counter::POLICY_REJECT);
            if enforce {
                bump(counter::POLICY_DROP);
                return true;
            }
            return false;
        }
    }
    let (verdict, rule_id) = if stateful {
        match_rules(&p.key, &b)
    } else {
        cached_match(&p.key, &b, epoch)
    };
    p.key.action = verdict;
    p.rule_id = rule_id;
    // Audit: remember rejected connections too, so that their later packets and
    // replies keep the verdict enforce would have given them.
    if verdict == action::ACCEPT || !enforce {
        if let Some(ct) = &ct {
            let v = CtValue {
                epoch,
                rule_id,
                opened: dir,
                action: verdict,
                _pad: [0; 2],
            };
            if CONNTRACK.insert(ct, &v, 0).is_err() {
                bump(counter::CT_ERROR);
            }
        }
    }
    if verdict == action::ACCEPT {
        return false;
    }
    bump(counter::POLICY_REJECT);
    if enforce {
        bump(counter::POLICY_DROP);
        return true;
    }
    false
}

/// Turns a stream key into the key of the same stream seen in the other direction.
#[inline(always)]
pub(crate) fn reverse(k: &mut FlowKey) {
    core::mem::swap(&mut k.src_addr, &mut k.dst_addr);
    core::mem::swap(&mut k.src_port, &mut k.dst_port);
    k.direction ^= 1;
}

/// The connection a packet belongs to, the same key for both directions.
#[inline(always)]
pub(crate) fn ct_key(k: &FlowKey) -> CtKey {
    let inbound = k.direction == direction::IN;
    let (local_addr, remote_addr, local_port, remote_port) = if inbound {
        (k.dst_addr, k.src_addr, k.dst_port, k.src_port)
    } else {
        (k.src_addr, k.dst_addr, k.src_port, k.dst_port)
    };
    CtKey {
        ifindex: k.ifindex,
        local_addr,
        remote_addr,
        local_port,
        remote_port,
        protocol: k.protocol,
        family: k.family,
        _pad: [0; 2],
    }
}

/// First rule, in priority order, whose peer CIDR, protocol and destination port
/// match; else the direction's default. Bounded: at most `policy::MAX_RULES` rules.
/// (`b.set_id` names the rule set in the binding's generation.)
#[inline(always)]
pub(crate) fn match_rules(k: &FlowKey, b: &PolicyBinding) -> (u8, u32) {
    let dir = k.direction;
    let default_action = if dir == direction::IN {
        b.default_action[0]
    } else {
        b.default_action[1]
    };
    let default = (default_action, policy::RULE_DEFAULT);
    let peer = if dir == direction::IN {
        k.src_addr
    } else {
        k.dst_addr
    };
    let lpm = LpmKey::new(
        policy::CIDR_KEY_PREFIX_BITS + 128,
        CidrKey {
            set_id: b.set_id,
            direction: dir,
            family: k.family,
            _pad: [0; 2],
            addr: peer,
        },
    );
    let Some(bits) = POL_CIDR.get(&lpm) else {
        return default;
    };
    let mut walk = RuleWalk {
        bits: *bits,
        base: b.set_id * policy::MAX_RULES,
        dst_port: k.dst_port,
        protocol: k.protocol,
        has_ports: (k.flags & key_flags::PORTS != 0) as u8,
        found: 0,
        action: 0,
        rule_id: 0,
    };
    // bpf_loop: the verifier checks the callback once instead of every unrolled
    // iteration on every parse path (which made loading take seconds).
    // SAFETY: `rule_step` has the callback signature bpf_loop expects and `walk`
    // outlives the call.
    unsafe {
        bpf_loop(
            (b.rule_count as u32).min(policy::MAX_RULES),
            rule_step as *const () as *mut c_void,
            &mut walk as *mut RuleWalk as *mut c_void,
            0,
        )
    };
    if walk.found != 0 {
        (walk.action, walk.rule_id)
    } else {
        default
    }
}

/// A verdict of a stateless rule set, remembered per CPU: the rules' answer depends
/// only on what a slot holds (interface, direction, family, peer address, protocol,
/// destination port) and on the policy epoch, so a slot of the current epoch with the
/// same inputs gives the rule walk's answer without the LPM lookup and the walk.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct VerdictSlot {
    peer: [u8; 16],
    ifindex: u32,
    /// Policy epoch the verdict was computed in; any reload changes it.
    epoch: u32,
    rule_id: u32,
    dst_port: u16,
    direction: u8,
    family: u8,
    protocol: u8,
    has_ports: u8,
    /// 1 once the slot holds a verdict.
    valid: u8,
    action: u8,
}

/// Slots of the per-CPU verdict cache (a power of two); a collision only costs a
/// rule walk.
pub(crate) const VERDICT_SLOTS: u32 = 1024;

#[map(name = "VERDICTS")]
pub(crate) static VERDICTS: PerCpuArray<VerdictSlot> =
    PerCpuArray::with_max_entries(VERDICT_SLOTS, 0);

/// [`match_rules`] through the per-CPU verdict cache (stateless rule sets).
#[inline(always)]
pub(crate) fn cached_match(k: &FlowKey, b: &PolicyBinding, epoch: u32) -> (u8, u32) {
    let dir = k.direction;
    let peer = if dir == direction::IN {
        k.src_addr
    } else {
        k.dst_addr
    };
    let has_ports = (k.flags & key_flags::PORTS != 0) as u8;
    let dst_port = if has_ports != 0 { k.dst_port } else { 0 };
    // SAFETY: [u8; 16] and [u32; 4] have the same size, every bit pattern is valid.
    let w: [u32; 4] = unsafe { core::mem::transmute(peer) };
    let mix = w[0]
        ^ w[1].rotate_left(7)
        ^ w[2].rotate_left(13)
        ^ w[3].rotate_left(19)
        ^ k.ifindex.wrapping_mul(0x85eb_ca6b)
        ^ ((dst_port as u32) << 16 | (k.protocol as u32) << 8 | dir as u32);
    let idx = mix.wrapping_mul(0x9e37_79b1) >> (32 - VERDICT_SLOTS.trailing_zeros());
    let Some(slot) = VERDICTS.get_ptr_mut(idx) else {
        return match_rules(k, b);
    };
    // SAFETY: this CPU's slot; programs on one CPU do not run concurrently.
    let slot = unsafe { &mut *slot };
    if slot.valid != 0
        && slot.epoch == epoch
        && slot.ifindex == k.ifindex
        && slot.peer == peer
        && slot.dst_port == dst_port
        && slot.protocol == k.protocol
        && slot.direction == dir
        && slot.family == k.family
        && slot.has_ports == has_ports
    {
        return (slot.action, slot.rule_id);
    }
    let (action, rule_id) = match_rules(k, b);
    *slot = VerdictSlot {
        peer,
        ifindex: k.ifindex,
        epoch,
        rule_id,
        dst_port,
        direction: dir,
        family: k.family,
        protocol: k.protocol,
        has_ports,
        valid: 1,
        action,
    };
    (action, rule_id)
}

/// State of the walk over a rule set's candidate rules.
#[repr(C)]
pub(crate) struct RuleWalk {
    /// Candidate rules (peer CIDR matched), bit i = i-th rule in priority order.
    bits: u64,
    /// Index of the set's first rule in `POL_RULE`.
    base: u32,
    dst_port: u16,
    protocol: u8,
    has_ports: u8,
    found: u8,
    action: u8,
    rule_id: u32,
}

/// One step of the rule walk: returns 1 (stop) at the first matching rule.
extern "C" fn rule_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given in `match_rules`.
    let w = unsafe { &mut *(ctx as *mut RuleWalk) };
    if i >= policy::MAX_RULES || (w.bits >> i) & 1 == 0 {
        return 0;
    }
    let Some(r) = POL_RULE.get(w.base + i) else {
        return 1;
    };
    if r.protocol_any == 0 && r.protocol != w.protocol {
        return 0;
    }
    let all_ports = r.port_lo == 0 && r.port_hi == u16::MAX;
    if !all_ports && (w.has_ports == 0 || w.dst_port < r.port_lo || w.dst_port > r.port_hi) {
        return 0;
    }
    w.found = 1;
    w.action = r.action;
    w.rule_id = r.id;
    1
}
