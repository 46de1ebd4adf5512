//! Replays the fuzz corpus (`coordinator/fuzz/corpus/coordinator_config/*`)
//! through the fuzz target's check, so every input a fuzzer ever kept is a test.

use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
mod checks;

#[test]
fn every_kept_config_passes_the_fuzz_check() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/coordinator_config");
    let kept: Vec<_> = std::fs::read_dir(corpus)?.collect::<Result<_, _>>()?;
    assert!(kept.len() >= 3, "the seed corpus is missing");
    for file in kept {
        checks::coordinator_config(&std::fs::read(file.path())?);
    }
    Ok(())
}
