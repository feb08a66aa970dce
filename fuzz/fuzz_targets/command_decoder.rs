//! Any bytes on a command topic decode to a command or to a dead-letter reason; never a
//! panic. Run: RUSTC_BOOTSTRAP=1 cargo fuzz run command_decoder fuzz/corpus/command_decoder
#![no_main]

use libfuzzer_sys::fuzz_target;
use millrace::codec::Format;
use millrace::domain::customer::CustomerAggregate;
use millrace::processor::wire::decode_command;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Protobuf] {
        if let Ok(c) = decode_command::<CustomerAggregate>(format, data) {
            assert!(!c.command_id.is_empty() && !c.aggregate_id.is_empty());
        }
    }
});
