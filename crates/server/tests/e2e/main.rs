//! The server's behaviour on the wire, with raw WebSocket clients against a
//! real server on `127.0.0.1:0`: bad input, limits, dead peers.

mod acks;
mod bad_input;
mod connections;
mod hibernation;
mod limits;
mod liveness;
mod upgrade;
mod util;
