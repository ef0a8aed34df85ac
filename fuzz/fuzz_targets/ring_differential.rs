#![no_main]
//! Our split ring against virtio-queue on hostile rings: see `volt_net_fuzz::ring_differential`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    volt_net_fuzz::ring_differential(data);
});
