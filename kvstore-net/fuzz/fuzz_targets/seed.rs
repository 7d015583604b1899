//! Fuzzes the seed-dialect parser: no input panics, every step makes
//! progress or asks for more, and feeding the input in two chunks parses
//! exactly as feeding it whole.
#![no_main]

use kvstore_net::protocol::seed::{parse, Limits};
use kvstore_net::protocol::{describe_steps, KeyPolicy, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limits and a cut point.
    let Some((&ctl, buf)) = data.split_first() else { return };
    let limits = Limits {
        max_value_bytes: if ctl & 1 == 0 { 1 << 20 } else { 8 },
        keys: if ctl & 2 == 0 { KeyPolicy::Strict } else { KeyPolicy::MemcachedCompatible },
    };
    let whole = describe_steps(buf, |b| parse(b, &limits));
    // Parsing a prefix never yields a different first request: a request
    // complete in the prefix is the same request in the whole input.
    let cut = (usize::from(ctl) * buf.len()) / 255;
    if let Parsed::Request { request, consumed } = parse(&buf[..cut], &limits) {
        assert_eq!(Some(&format!("{request:?}")), whole.first());
        assert!(consumed <= cut);
    }
});
