//! The `[paths]` section: TOML into `PathsFile`, compiled into roles, address sets
//! and rules, then the kernel LPM entries and a role lookup.
#![no_main]

use flowlog_agent::paths::{Paths, PathsFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = toml::from_str::<PathsFile>(text) else {
        return;
    };
    if let Ok(paths) = Paths::compile(&file) {
        let _ = paths.cidr_entries();
        let _ = paths.role_of("eth0");
    }
});
