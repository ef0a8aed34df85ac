//! Runs the harnesses over their built-in seeds and over every file in their corpus
//! directories, so `cargo test` catches a crash that a corpus (seeds, and any regression inputs
//! kept there) already knows, without libFuzzer. `VOLT_WRITE_SEEDS=1` (re)writes the seed files.

use std::path::Path;

fn seeds_and_corpus(target: &str, seeds: Vec<(String, Vec<u8>)>, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    if std::env::var_os("VOLT_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
    for (_, bytes) in &seeds {
        harness(bytes);
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("entry").path();
        let input = std::fs::read(&path).expect("read input");
        let run = std::panic::catch_unwind(|| harness(&input));
        assert!(run.is_ok(), "{} fails", path.display());
        n += 1;
    }
    assert!(
        n >= seeds.len(),
        "the committed seeds are in {}",
        dir.display()
    );
}

#[test]
fn header_translate_seeds_and_corpus_run_clean() {
    seeds_and_corpus(
        "header_translate",
        volt_net_fuzz::seeds(),
        volt_net_fuzz::header_translate,
    );
}

#[test]
fn virtio_device_seeds_and_corpus_run_clean() {
    seeds_and_corpus(
        "virtio_device",
        volt_net_fuzz::device_seeds(),
        volt_net_fuzz::virtio_device,
    );
}

#[test]
fn ring_differential_seeds_and_corpus_run_clean() {
    seeds_and_corpus(
        "ring_differential",
        volt_net_fuzz::ring_seeds(),
        volt_net_fuzz::ring_differential,
    );
}

#[test]
fn vhost_user_messages_seeds_and_corpus_run_clean() {
    seeds_and_corpus(
        "vhost_user_messages",
        volt_net_fuzz::vhost_user_seeds(),
        volt_net_fuzz::vhost_user_messages,
    );
}
