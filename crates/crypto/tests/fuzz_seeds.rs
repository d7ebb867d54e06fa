//! Every input in `fuzz/seeds/` for this crate's fuzz targets (the
//! hand-written seeds, the minimized corpus and every input that once broke
//! a target) runs through the targets' own checks, so `cargo test` guards
//! what fuzzing found without nightly (issue 5: every crash found becomes a
//! regression test).

#[path = "../../../fuzz/checks/attachment.rs"]
mod attachment;
#[path = "../../../fuzz/checks/envelope.rs"]
mod envelope;

#[path = "../../../fuzz/checks/seeds.rs"]
mod seeds;
use seeds::run_seeds;

#[test]
fn envelope_parser_passes_every_envelope_seed() {
    run_seeds("envelope", envelope::check);
}

#[test]
fn payload_and_attachment_parsers_pass_every_attachment_seed() {
    run_seeds("attachment", attachment::check);
}
