//! Replays the fuzz corpus (`node/fuzz/corpus/TARGET/*`) through the same
//! checks as the fuzz targets, so every input a fuzzer ever kept is a test.

use std::path::Path;

#[path = "../fuzz/src/lib.rs"]
mod checks;

#[test]
fn every_corpus_input_passes_its_target() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, check) in checks::TARGETS {
        let mut inputs = 0;
        for entry in std::fs::read_dir(corpus.join(name))? {
            check(&std::fs::read(entry?.path())?);
            inputs += 1;
        }
        assert!(inputs >= 3, "{name}: the seed corpus is missing");
    }
    let store = checks::store_dir();
    if store.exists() {
        std::fs::remove_dir_all(store)?;
    }
    Ok(())
}
