//! The search part of `<search> | <SQL>` queries, and its SQL rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(search) = flowlog_query::search::parse(text) {
        let _ = search.is_all();
        let _ = search.to_sql();
    }
});
