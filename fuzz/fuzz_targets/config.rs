//! The agent's configuration file: TOML parsing, then the merge with (empty) flags
//! and the validation of everything in it (windows, sinks, [paths], [[flow_log]]).
//! Every interface resolves (to ifindex 7), so two interfaces hit `SameDevice`.
//! `policy = "FILE"` is dropped: from_parts would read that file (a fuzzed path such
//! as /dev/zero never ends); policy text is the `policy` target's.
#![no_main]

use std::path::Path;

use flowlog_agent::config::{parse_file, Config, RunArgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut file) = parse_file(text, Path::new("fuzz.toml")) else {
        return;
    };
    file.policy = None;
    let _ = Config::from_parts(&RunArgs::default(), Some(file), |_| Some(7));
});
