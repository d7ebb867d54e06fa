//! Every input in `fuzz/seeds/` for this crate's fuzz targets (the
//! hand-written seeds, the minimized corpus and every input that once broke
//! a target) runs through the targets' own checks, so `cargo test` guards
//! what fuzzing found without nightly (issue 5: every crash found becomes a
//! regression test).

#[path = "../../../fuzz/checks/frame_decode.rs"]
mod frame_decode;
#[path = "../../../fuzz/checks/server_frame.rs"]
mod server_frame;

#[path = "../../../fuzz/checks/seeds.rs"]
mod seeds;
use seeds::run_seeds;

#[test]
fn request_parser_passes_every_frame_decode_seed() {
    run_seeds("frame_decode", frame_decode::check);
}

#[test]
fn server_frame_decoder_passes_every_server_frame_seed() {
    run_seeds("server_frame", server_frame::check);
}
