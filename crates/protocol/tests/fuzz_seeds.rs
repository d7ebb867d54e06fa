//! Every input in `fuzz/seeds/` for this crate's fuzz targets (the
//! hand-written seeds, the minimized corpus and every input that once broke
//! a target) runs through the targets' own checks, so `cargo test` guards
//! what fuzzing found without nightly (issue 5: every crash found becomes a
//! regression test).

#[path = "../../../fuzz/checks/frame_decode.rs"]
mod frame_decode;
#[path = "../../../fuzz/checks/server_frame.rs"]
mod server_frame;

/// Runs `check` over every file in `fuzz/seeds/TARGET/`, naming the file
/// that fails.
fn run_seeds(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    for f in files {
        let data = std::fs::read(&f).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{} fails the {target} fuzz check", f.display());
        }
    }
}

#[test]
fn request_parser_passes_every_frame_decode_seed() {
    run_seeds("frame_decode", frame_decode::check);
}

#[test]
fn server_frame_decoder_passes_every_server_frame_seed() {
    run_seeds("server_frame", server_frame::check);
}
