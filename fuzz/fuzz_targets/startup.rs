//! Fuzzes the untagged startup packets (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgcloak::protocol::startup;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(packet)) = startup::split(&mut buf) {
        if let startup::StartupPacket::Startup(m) = packet {
            let _ = (m.user(), m.database(), m.param("application_name"));
        }
    }
});
