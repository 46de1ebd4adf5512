//! Replays the fuzz corpus (`proto/fuzz/corpus/TARGET/*`) through the same
//! checks as the fuzz targets, so every input a fuzzer ever kept is a test.

use std::path::Path;

use cartable_proto::fuzzing::TARGETS;

#[test]
fn every_corpus_input_passes_its_target() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, check) in TARGETS {
        let mut inputs = 0;
        for entry in std::fs::read_dir(corpus.join(name))? {
            check(&std::fs::read(entry?.path())?);
            inputs += 1;
        }
        assert!(inputs >= 3, "{name}: the seed corpus is missing");
    }
    Ok(())
}
