//! Each `vhost_user_messages` seed reaches the path it is named for, so the fuzzer starts
//! from deep in the session, and the daemon's parser and state machine keep taking QEMU's
//! sequences.

use net_vhostuser::harness::drive;
use net_vhostuser::session::End;

fn seed(name: &str) -> Vec<u8> {
    volt_net_fuzz::vhost_user_seeds()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b)
        .expect("a seed of that name")
}

#[test]
fn a_whole_start_and_stop_is_taken() {
    assert_eq!(drive(&seed("seed-start")), None);
}

#[test]
fn ring_enables_before_the_features_are_taken() {
    assert_eq!(drive(&seed("seed-qemu72-order")), None);
}

#[test]
fn a_memory_file_shorter_than_its_region_is_refused() {
    match drive(&seed("seed-short-file")) {
        Some(End::Refused(why)) => assert!(why.contains("-byte file"), "{why}"),
        other => panic!("refused for the file's length, not {other:?}"),
    }
}
