//! Runs the harness over the built-in seeds and over every file in the corpus directory, so
//! `cargo test` catches a crash that the corpus (seeds, and any regression inputs kept there)
//! already knows, without libFuzzer. `VOLT_WRITE_SEEDS=1` (re)writes the seed files.

use std::path::Path;

#[test]
fn seeds_and_corpus_run_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/header_translate");
    let seeds = volt_net_fuzz::seeds();
    if std::env::var_os("VOLT_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
    for (_, bytes) in &seeds {
        volt_net_fuzz::header_translate(bytes);
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("entry").path();
        volt_net_fuzz::header_translate(&std::fs::read(&path).expect("read input"));
        n += 1;
    }
    assert!(
        n >= seeds.len(),
        "the committed seeds are in {}",
        dir.display()
    );
}
