//! Fuzzes every decoder of stored documents and events: any bytes must give a value or an
//! error, never a panic, and what decodes must re-encode and decode to the same value.
//!
//! Run: `scripts/fuzz.sh [SECONDS]` (cargo-fuzz on the stable toolchain via RUSTC_BOOTSTRAP).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tatbot_state::Timestamp;
use tatbot_state::model::{Event, NodeHealth, RobotState, StrokeProgress};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(event) = Event::from_json(bytes) {
        let again = Event::from_json(event.to_json().as_bytes()).expect("our encoding decodes");
        assert_eq!(again, event);
    }
    if let Ok(progress) = serde_json::from_slice::<StrokeProgress>(bytes) {
        let text = serde_json::to_string(&progress).expect("a decoded document encodes");
        assert_eq!(serde_json::from_str::<StrokeProgress>(&text).expect("our encoding decodes"), progress);
    }
    let _ = serde_json::from_slice::<RobotState>(bytes);
    let _ = serde_json::from_slice::<NodeHealth>(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Ok(timestamp) = Timestamp::parse(text) {
            assert_eq!(Timestamp::parse(&timestamp.to_string()), Ok(timestamp));
        }
    }
});
