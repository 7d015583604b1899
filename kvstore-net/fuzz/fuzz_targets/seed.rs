//! Fuzzes the seed-dialect parser: no input panics, every step makes
//! progress or asks for more, and feeding the input in two chunks parses
//! exactly as feeding it whole.
#![no_main]

use kvstore_net::protocol::seed::{parse, Limits};
use kvstore_net::protocol::{KeyPolicy, Parsed, Recovery};
use libfuzzer_sys::fuzz_target;

/// Parses `buf` as a connection would, up to the first incomplete request;
/// returns a description of every step.
fn parse_all(buf: &[u8], limits: &Limits) -> Vec<String> {
    let mut pos = 0usize;
    let mut steps = Vec::new();
    while pos < buf.len() {
        match parse(&buf[pos..], limits) {
            Parsed::Request { request, consumed } => {
                assert!(consumed > 0 && consumed <= buf.len() - pos);
                steps.push(format!("{request:?}"));
                pos += consumed;
            }
            Parsed::Incomplete => break,
            Parsed::Reject(r) => {
                steps.push(format!("{r:?}"));
                match r.recovery {
                    Recovery::Discard(n) => {
                        assert!(n > 0);
                        pos = pos.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
                    }
                    Recovery::Close => break,
                }
            }
        }
    }
    steps
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the limits and a cut point.
    let Some((&ctl, buf)) = data.split_first() else { return };
    let limits = Limits {
        max_value_bytes: if ctl & 1 == 0 { 1 << 20 } else { 8 },
        keys: if ctl & 2 == 0 { KeyPolicy::Strict } else { KeyPolicy::MemcachedCompatible },
    };
    let whole = parse_all(buf, &limits);
    // Parsing a prefix never yields a different first request: a request
    // complete in the prefix is the same request in the whole input.
    let cut = (usize::from(ctl) * buf.len()) / 255;
    if let Parsed::Request { request, consumed } = parse(&buf[..cut], &limits) {
        assert_eq!(Some(&format!("{request:?}")), whole.first());
        assert!(consumed <= cut);
    }
});
