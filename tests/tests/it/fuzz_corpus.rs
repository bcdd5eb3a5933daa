//! Every committed fuzz corpus file through its target's body (`lattice_tests::fuzz`): the
//! inputs libFuzzer kept (and any crash turned into a corpus file) stay checked by a plain
//! `cargo test`, without the nightly instrumented build `tests/fuzz/run.sh` needs.

use std::path::PathBuf;

use lattice_tests::fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_fuzz_target_has_a_committed_corpus() {
    let targets_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = std::fs::read_dir(&targets_dir)
        .expect("tests/fuzz/fuzz_targets")
        .map(|entry| entry.expect("an entry").path())
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_owned()))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        on_disk, listed,
        "lattice_tests::fuzz::TARGETS lists every fuzz target"
    );
    for name in listed {
        let files = std::fs::read_dir(corpus_dir(name)).map_or(0, |dir| dir.count());
        assert!(files > 0, "tests/fuzz/corpus/{name} is empty");
    }
}

#[test]
fn every_corpus_input_passes_its_fuzz_target() {
    let mut inputs = 0;
    for (name, body) in TARGETS {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(name))
            .expect("a corpus folder")
            .map(|entry| entry.expect("an entry").path())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("a corpus file");
            // A panic names the input that caused it.
            eprintln!("fuzz corpus: {}", file.display());
            body(&data);
            inputs += 1;
        }
    }
    assert!(inputs > 0);
    eprintln!("fuzz corpus: {inputs} inputs passed");
}
