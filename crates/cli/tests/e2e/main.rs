//! The `telepound` binary as a user runs it: real server processes, real
//! client processes, real signals.

mod classic;
mod crash;
mod files;
mod groups;
mod load_crash;
mod queued;
mod reconnect;
mod tls;
mod util;
mod walkthrough;
