//! Any bytes given to the topology parser yield a topology or a positioned error; never a
//! panic. Run: RUSTC_BOOTSTRAP=1 cargo fuzz run topology_parser fuzz/corpus/topology_parser
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(millrace::topology::TopologyError::Invalid { at, .. }) =
            millrace::topology::parse(std::path::Path::new("fuzz.yaml"), text)
        {
            assert!(at.line >= 1 && at.column >= 1);
        }
    }
});
