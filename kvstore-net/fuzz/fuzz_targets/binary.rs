//! Fuzzes the binary-protocol parser: no input panics, every step makes
//! progress or asks for more, a request complete in a prefix is the same
//! request in the whole input, and the parser never waits for more than
//! `max_request_bytes`.
#![no_main]

use kvstore_net::protocol::binary::{max_request_bytes, parse};
use kvstore_net::protocol::memcached::Limits;
use kvstore_net::protocol::{describe_steps, KeyPolicy, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limits and a cut point.
    let Some((&ctl, buf)) = data.split_first() else { return };
    let limits = Limits {
        max_value_bytes: if ctl & 1 == 0 { 1 << 10 } else { 8 },
        keys: if ctl & 2 == 0 { KeyPolicy::Strict } else { KeyPolicy::MemcachedCompatible },
    };
    let whole = describe_steps(buf, |b| parse(b, &limits));
    let cut = (usize::from(ctl) * buf.len()) / 255;
    if let Parsed::Request { request, consumed } = parse(&buf[..cut], &limits) {
        assert_eq!(Some(&format!("{request:?}")), whole.first());
        assert!(consumed <= cut);
    }
    let bound = max_request_bytes(limits.max_value_bytes);
    if buf.len() >= bound {
        assert_ne!(parse(&buf[..bound], &limits), Parsed::Incomplete);
    }
});
