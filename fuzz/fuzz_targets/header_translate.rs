#![no_main]
//! Header decode, translation and segmentation on arbitrary bytes: see
//! `volt_net_fuzz::header_translate` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    volt_net_fuzz::header_translate(data);
});
