//! Control-socket requests: one JSON line. A `create` is validated as the agent does
//! (every interface and bridge exists, [paths] configured, no sinks), and a valid
//! flow log must survive the round trip through what the state file and `describe`
//! hold: `to_file` validates again, to the same spec and state.
#![no_main]

use flowlog_agent::instance::{control::parse_request, control::Request, Checks, FlowLogSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Request::Create { flow_log }) = parse_request(data) else {
        return;
    };
    let exists = |_: &str| true;
    let checks = Checks {
        interface_exists: Some(&exists),
        bridge_exists: &|_| true,
        paths_configured: true,
        sinks: &[],
    };
    let Ok((spec, active)) = FlowLogSpec::validate(&flow_log, &checks) else {
        return;
    };
    let written = spec.to_file(active);
    let again = FlowLogSpec::validate(&written, &checks).unwrap_or_else(|e| {
        panic!("to_file of a valid flow log does not validate: {e}\n{flow_log:?}\n{written:?}")
    });
    assert_eq!(
        again,
        (spec, active),
        "round trip changed the flow log\n{flow_log:?}\n{written:?}"
    );
    // The state file holds it as JSON: that must parse back too.
    let json = serde_json::to_vec(&written).expect("a flow log serializes");
    let back: flowlog_agent::instance::FlowLogFile =
        serde_json::from_slice(&json).expect("a serialized flow log parses");
    assert_eq!(back, written);
});
