//! End-to-end tests of the client library against a real server on
//! `127.0.0.1:0`: real WebSockets, real databases, real files.

mod conversation;
mod files;
mod groups;
mod keys;
mod outbox;
mod postgres;
mod secrets;
mod util;
