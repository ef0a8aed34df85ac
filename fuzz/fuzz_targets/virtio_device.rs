#![no_main]
//! A hostile guest driving the real virtio-net device (TX pump, RX pump, control queue) over
//! the loopback backend: see `volt_net_fuzz::virtio_device` for the input layout and the checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    volt_net_fuzz::virtio_device(data);
});
