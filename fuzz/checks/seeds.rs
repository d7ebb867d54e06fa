//! Runs a fuzz target's check over its seeds: shared by the crates' seed
//! tests (`tests/fuzz_seeds.rs`).

/// Runs `check` over every file in `fuzz/seeds/TARGET/`, naming the file
/// that fails.
pub fn run_seeds(target: &str, check: fn(&[u8])) {
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
