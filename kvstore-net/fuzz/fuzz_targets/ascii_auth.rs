//! Fuzzes memcached's ASCII authentication step (the only parser an
//! unauthenticated text connection meets): no input panics, every step
//! makes progress or asks for more, a step complete in a prefix is the same
//! step in the whole input, and an incomplete step holds at most one line
//! and one authentication data block.
#![no_main]

use kvstore_net::protocol::memcached::{
    parse_ascii_auth, AuthStep, MAX_AUTH_DATA_BYTES, MAX_AUTH_LINE_BYTES,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a cut point.
    let Some((&ctl, buf)) = data.split_first() else { return };
    let whole = parse_ascii_auth(buf);
    match whole {
        AuthStep::Refuse { consumed, .. } | AuthStep::Credentials { consumed, .. } => {
            assert!(consumed > 0 && consumed <= buf.len());
        }
        AuthStep::Incomplete => match buf.iter().position(|&b| b == b'\n') {
            None => assert!(buf.len() <= MAX_AUTH_LINE_BYTES),
            Some(nl) => assert!(buf.len() < nl + 1 + MAX_AUTH_DATA_BYTES as usize + 2),
        },
        AuthStep::Close => {}
    }
    let cut = (usize::from(ctl) * buf.len()) / 255;
    let prefix = parse_ascii_auth(&buf[..cut]);
    if prefix != AuthStep::Incomplete && !(prefix == AuthStep::Close && cut > MAX_AUTH_LINE_BYTES) {
        assert_eq!(prefix, whole);
    }
});
