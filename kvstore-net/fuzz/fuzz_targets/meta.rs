//! Fuzzes the meta-command parser: no input panics, every step makes
//! progress or asks for more, and a request complete in a prefix of the
//! input is the first request of the whole input.
#![no_main]

use kvstore_net::protocol::memcached::Limits;
use kvstore_net::protocol::meta::{encode, parse, Code, ItemInfo, Lease, Reply};
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
    let cut = (usize::from(ctl) * buf.len()) / 255;
    if let Parsed::Request { request, consumed } = parse(&buf[..cut], &limits) {
        assert_eq!(Some(&format!("{request:?}")), whole.first());
        assert!(consumed <= cut);
        // Encoding any reply to a parsed request never panics.
        let mut out = Vec::new();
        let reply = Reply {
            code: if ctl & 4 == 0 { Code::Va } else { Code::Hd },
            item: (ctl & 8 == 0).then(ItemInfo::default),
            value: b"v",
            lease: Lease::default(),
        };
        encode(&mut out, &request, &reply);
    }
});
