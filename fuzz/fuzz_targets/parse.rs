//! The key parser on arbitrary text: it must never panic, and what it accepts must be well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_api_key::key::KeyFormat;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let format = KeyFormat::new("mesh").unwrap();
    if let Ok(parsed) = format.parse(text) {
        assert!(text.starts_with("mesh_"));
        assert_eq!(parsed.id().len(), tower_api_key::key::ID_LEN);
    }
});
