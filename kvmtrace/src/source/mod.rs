//! Where intervals come from: the live tracer ([`live`]) and recording files ([`recording`]).
pub mod live;
pub mod recording;
