#![no_main]
//! A hostile vhost-user frontend's messages through the daemon's parser and session: see
//! `volt_net_fuzz::vhost_user_messages`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    volt_net_fuzz::vhost_user_messages(data);
});
