//! Fuzzes the replay reader: any bytes give a recording or a one-line error, never a panic,
//! and every decoded message is one of our topics' records.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tatbot_state::record::replay::read_recording;

fuzz_target!(|data: &[u8]| {
    match read_recording(data) {
        Ok(recording) => {
            assert!(recording.items.len() as u64 + recording.corrupt <= data.len() as u64);
        }
        Err(err) => assert!(!err.to_string().contains('\n'), "multi-line error: {err}"),
    }
});
