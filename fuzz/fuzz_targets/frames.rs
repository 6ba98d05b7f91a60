//! Fuzzes the framing of both directions and every decoder the proxy runs on a frame, plus the
//! response tracker: no input may panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcloak::protocol::frame::{split, Direction};
use pgcloak::protocol::messages;
use pgcloak::session::track::Tracker;

fuzz_target!(|data: &[u8]| {
    for direction in [Direction::Frontend, Direction::Backend] {
        let mut buf = BytesMut::from(data);
        let mut tracker = Tracker::new();
        while let Ok(Some(frame)) = split(&mut buf, direction, 1 << 20) {
            let body = frame.body();
            let _ = messages::error_fields(body);
            let _ = messages::command_rows(body);
            let _ = messages::query_text(body);
            let _ = messages::parse_text(body);
            let _ = messages::bind_names(body);
            if let Ok(bind) = messages::Bind::decode(body) {
                // A decoded Bind reads back whole and encodes to the bytes it came from.
                let values: Vec<_> = bind.values().collect();
                assert_eq!(values.len(), bind.param_count());
                let _ = bind.result_formats().count();
                assert_eq!(&bind.encode(values.into_iter())[5..], body);
            }
            let _ = messages::parse_message(body);
            let _ = messages::without_context(body);
            let _ = messages::execute_portal(body);
            let _ = messages::target(body, "Describe");
            let _ = messages::auth_code(body);
            let _ = messages::strip_channel_binding(body);
            let _ = tracker.on_backend(frame.tag, body);
        }
    }
});
