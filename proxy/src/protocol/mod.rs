//! PostgreSQL wire protocol v3 without I/O: framing of both directions, the startup packets, and the few
//! messages the proxy builds or reads itself. Unchanged frames are forwarded as the bytes that arrived.
//!
//! pgwire's decoders assume well-formed input (they panic on short frames and decode strings lossily), so
//! the framing and the decoders the proxy relies on are written here, bounds-checked, one frame at a time.

// Parsers of untrusted input: no unwrap, expect or panic outside tests (the linter holds the "no panic
// on any input" claim; the fuzz targets in fuzz/ check it at run time).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod frame;
pub mod messages;
pub mod reader;
pub mod startup;

pub use frame::{Direction, Frame, FrameRef};
