//! Policy files: TOML parsing and the validation of rule sets, rules and CIDRs.
#![no_main]

use std::path::Path;

use flowlog_agent::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = Policy::parse(text, Path::new("fuzz.toml")) {
        // What the agent derives from a valid policy for the kernel maps.
        let _ = policy.cidr_entries();
        let _ = policy.interfaces().count();
        for set_id in 0..policy.sets.len() {
            let _ = policy.binding(set_id);
            let _ = policy.kernel_rules(set_id);
        }
    }
});
