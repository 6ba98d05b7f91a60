//! PostgreSQL wire protocol v3 without I/O: framing of both directions, the startup packets, and the few
//! messages the proxy builds or reads itself. Unchanged frames are forwarded as the bytes that arrived.
//!
//! pgwire's decoders assume well-formed input (they panic on short frames and decode strings lossily), so
//! the framing and the decoders the proxy relies on are written here, bounds-checked, one frame at a time.

pub mod frame;
pub mod messages;
pub mod startup;

pub use frame::{Direction, Frame, FrameRef};
