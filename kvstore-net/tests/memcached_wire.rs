//! The memcached dialect against the in-process server: raw bytes for the
//! replies docs/PROTOCOL.md lists, and the `McClient`.

use crate::common;

use std::io::Write;

use common::{expect, line, raw, read_to_eof, round_trip, start, wait_for};
use kvstore_net::{Error, McCasOutcome, McClient};

#[test]
fn storage_and_retrieval_exact_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"set a 42 0 5\r\nhello\r\n", b"STORED\r\n");
    round_trip(&mut s, b"get a\r\n", b"VALUE a 42 5\r\nhello\r\nEND\r\n");
    round_trip(&mut s, b"get missing\r\n", b"END\r\n");
    round_trip(&mut s, b"add a 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    round_trip(&mut s, b"add b 1 0 1\r\nb\r\n", b"STORED\r\n");
    round_trip(&mut s, b"replace nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    round_trip(&mut s, b"replace b 2 0 2\r\nbb\r\n", b"STORED\r\n");
    round_trip(&mut s, b"append a 0 0 1\r\n!\r\n", b"STORED\r\n");
    round_trip(&mut s, b"prepend a 0 0 1\r\n<\r\n", b"STORED\r\n");
    round_trip(&mut s, b"append nope 0 0 1\r\n!\r\n", b"NOT_STORED\r\n");
    round_trip(&mut s, b"prepend nope 0 0 1\r\n!\r\n", b"NOT_STORED\r\n");
    // append/prepend keep the flags
    round_trip(
        &mut s,
        b"get a missing b\r\n",
        b"VALUE a 42 7\r\n<hello!\r\nVALUE b 2 2\r\nbb\r\nEND\r\n",
    );
    // gets carries the cas; cas with it stores, a stale one is EXISTS
    s.write_all(b"gets b\r\n").unwrap();
    let header = line(&mut s);
    let parts: Vec<&str> = header.trim_end().split(' ').collect();
    assert_eq!(&parts[..4], &["VALUE", "b", "2", "2"]);
    let cas: u64 = parts[4].parse().unwrap();
    expect(&mut s, b"bb\r\nEND\r\n");
    round_trip(
        &mut s,
        format!("cas b 3 0 1 {cas}\r\nc\r\n").as_bytes(),
        b"STORED\r\n",
    );
    round_trip(
        &mut s,
        format!("cas b 3 0 1 {cas}\r\nd\r\n").as_bytes(),
        b"EXISTS\r\n",
    );
    round_trip(&mut s, b"cas nope 0 0 1 1\r\nd\r\n", b"NOT_FOUND\r\n");
    round_trip(&mut s, b"get b\r\n", b"VALUE b 3 1\r\nc\r\nEND\r\n");
    // delete
    round_trip(&mut s, b"delete b\r\n", b"DELETED\r\n");
    round_trip(&mut s, b"delete b\r\n", b"NOT_FOUND\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn counters_touch_flush_version_verbosity() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"set n 0 0 2\r\n10\r\n", b"STORED\r\n");
    round_trip(&mut s, b"incr n 5\r\n", b"15\r\n");
    round_trip(&mut s, b"decr n 100\r\n", b"0\r\n");
    round_trip(
        &mut s,
        b"set n 0 0 20\r\n18446744073709551615\r\n",
        b"STORED\r\n",
    );
    round_trip(&mut s, b"incr n 2\r\n", b"1\r\n");
    round_trip(&mut s, b"incr nope 1\r\n", b"NOT_FOUND\r\n");
    round_trip(&mut s, b"set t 0 0 3\r\nabc\r\n", b"STORED\r\n");
    round_trip(
        &mut s,
        b"incr t 1\r\n",
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    round_trip(
        &mut s,
        b"incr t x\r\n",
        b"CLIENT_ERROR invalid numeric delta argument\r\n",
    );
    round_trip(&mut s, b"touch t 100\r\n", b"TOUCHED\r\n");
    round_trip(&mut s, b"touch nope 100\r\n", b"NOT_FOUND\r\n");
    round_trip(&mut s, b"gat 100 t\r\n", b"VALUE t 0 3\r\nabc\r\nEND\r\n");
    round_trip(&mut s, b"verbosity 1\r\n", b"OK\r\n");
    s.write_all(b"version\r\n").unwrap();
    let v = line(&mut s);
    let v = v.strip_prefix("VERSION ").unwrap().trim_end();
    // `<major>.<minor>.<micro>`, major >= 1: libmemcached refuses a major
    // version 0 and stops at once.
    let parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(parts.len() == 3 && parts[0] >= 1, "version {v:?}");
    round_trip(&mut s, b"flush_all\r\n", b"OK\r\n");
    round_trip(&mut s, b"get t n\r\n", b"END\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn noreply_sends_nothing_but_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    s.write_all(
        b"set a 0 0 1 noreply\r\n1\r\nadd a 0 0 1 noreply\r\n2\r\nincr a 1 noreply\r\n\
          touch a 0 noreply\r\ndelete zz noreply\r\nverbosity 0 noreply\r\nflush_all 0 noreply\r\n\
          set b 0 0 1 noreply\r\nx\r\nincr b 1 noreply\r\ndelete k 10 noreply\r\n\
          incr b x noreply\r\ntouch b x noreply\r\nset c 0 0 1 noreply\r\nabc\r\n\
          set d 0 x 1 noreply\r\nget a b\r\n",
    )
    .unwrap();
    // As memcached 1.6: `noreply` silences the client errors too (a
    // non-numeric counter, a bad delta or exptime, a bad data chunk, a
    // malformed line), so no later reply shifts by one.
    expect(&mut s, b"VALUE b 0 1\r\nx\r\nEND\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn errors_keep_the_connection_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"set keep 7 0 4\r\nkeep\r\n", b"STORED\r\n");
    let cases: &[(&[u8], &[u8])] = &[
        (b"bogus\r\n", b"ERROR\r\n"),
        (b"get\r\n", b"ERROR\r\n"),
        (b"stats noreply\r\n", b"ERROR\r\n"),
        (b"set k 0 0\r\n", b"ERROR\r\n"),
        (
            b"set k 0 0 4294967295\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            b"set k 0 0 -1\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            b"set k x 0 1\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            b"set k 0 0 99999999999999999999999\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (b"delete\r\n", b"ERROR\r\n"),
        (
            b"delete k 10\r\n",
            b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
        ),
        (
            b"touch k x\r\n",
            b"CLIENT_ERROR invalid exptime argument\r\n",
        ),
        (
            b"verbosity x\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            b"get bad\x01\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            b"set k\x01 0 0 5\r\nhello\r\n",
            b"CLIENT_ERROR bad command line format\r\n",
        ),
        (
            b"set k 0 0 3\r\nhello\r\n",
            b"CLIENT_ERROR bad data chunk\r\n",
        ),
        (b"set k 0 0 3 noreply\r\nhello\r\n", b""),
        (
            b"set big 0 0 2000000\r\n",
            b"SERVER_ERROR object too large for cache\r\n",
        ),
    ];
    for (req, reply) in cases {
        round_trip(&mut s, req, reply);
        if req.starts_with(b"set big") {
            // The announced block is skipped as it arrives.
            s.write_all(&vec![b'z'; 2_000_000]).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        round_trip(
            &mut s,
            b"get keep\r\n",
            b"VALUE keep 7 4\r\nkeep\r\nEND\r\n",
        );
    }
    round_trip(&mut s, b"get k big\r\n", b"END\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn stats_has_the_required_counters_as_single_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = McClient::connect(srv.mc).unwrap();
    c.set("a", "1", 0, 0).unwrap();
    c.get("a").unwrap();
    c.get("b").unwrap();
    let mut s = raw(srv.mc);
    s.write_all(b"stats\r\n").unwrap();
    let mut names = Vec::new();
    loop {
        let l = line(&mut s);
        if l == "END\r\n" {
            break;
        }
        let body = l.strip_suffix("\r\n").unwrap();
        let parts: Vec<&str> = body.split(' ').collect();
        assert_eq!(parts.len(), 3, "{body:?}");
        assert_eq!(parts[0], "STAT");
        assert!(!parts[2].is_empty());
        names.push(parts[1].to_string());
    }
    for required in [
        "pid",
        "uptime",
        "time",
        "version",
        "curr_connections",
        "total_connections",
        "cmd_get",
        "cmd_set",
        "get_hits",
        "get_misses",
        "curr_items",
    ] {
        assert!(names.iter().any(|n| n == required), "missing {required}");
    }
    let stats = c.stats().unwrap();
    let get = |name: &str| -> u64 {
        stats
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    assert_eq!(get("pid"), u64::from(std::process::id()));
    assert_eq!(get("cmd_get"), 2);
    assert_eq!(get("get_hits"), 1);
    assert_eq!(get("get_misses"), 1);
    assert_eq!(get("cmd_set"), 1);
    assert_eq!(get("curr_items"), 1);
    assert_eq!(get("curr_connections"), 2);
    drop((c, s));
    srv.handle.shutdown().unwrap();
}

#[test]
fn quit_closes_and_http_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    s.write_all(b"version\r\nquit\r\n").unwrap();
    let got = read_to_eof(&mut s);
    assert!(got.starts_with(b"VERSION "), "{got:?}");
    let mut s = raw(srv.mc);
    s.write_all(b"POST /index.html HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_to_eof(&mut s), b"");
    srv.handle.shutdown().unwrap();
}

#[test]
fn mcclient_covers_the_dialect() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = McClient::connect(srv.mc).unwrap();
    c.set("k", "v", 7, 0).unwrap();
    let item = c.get("k").unwrap().unwrap();
    assert_eq!(
        (item.value.as_slice(), item.flags, item.cas),
        (&b"v"[..], 7, None)
    );
    let cas = c.gets("k").unwrap().unwrap().cas.unwrap();
    assert_eq!(
        c.cas("k", "w", 8, 0, cas + 1000).unwrap(),
        McCasOutcome::Exists
    );
    assert_eq!(c.cas("k", "w", 8, 0, cas).unwrap(), McCasOutcome::Stored);
    assert_eq!(
        c.cas("nope", "w", 8, 0, cas).unwrap(),
        McCasOutcome::NotFound
    );
    let after = c.gets("k").unwrap().unwrap();
    assert_eq!((after.value.as_slice(), after.flags), (&b"w"[..], 8));
    assert_ne!(after.cas, Some(cas));
    assert!(!c.add("k", "x", 0, 0).unwrap());
    assert!(c.add("k2", "x", 0, 0).unwrap());
    assert!(c.replace("k2", "y", 0, 0).unwrap());
    assert!(!c.replace("k3", "y", 0, 0).unwrap());
    assert!(c.append("k2", "z").unwrap());
    assert!(c.prepend("k2", "<").unwrap());
    assert_eq!(c.get("k2").unwrap().unwrap().value, b"<yz");
    let many = c.get_many(&["k", "missing", "k2"], true).unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(many[0].0, b"k");
    assert!(many[1].1.cas.is_some());
    c.set("n", "1", 0, 0).unwrap();
    assert_eq!(c.incr("n", 41).unwrap(), Some(42));
    assert_eq!(c.decr("n", 50).unwrap(), Some(0));
    assert_eq!(c.incr("none", 1).unwrap(), None);
    assert!(matches!(c.incr("k", 1), Err(Error::Rejected(_))));
    assert!(c.touch("k", 1000).unwrap());
    assert!(!c.touch("none", 1000).unwrap());
    assert_eq!(c.gat("k", 0).unwrap().unwrap().value, b"w");
    assert!(c.delete("k").unwrap());
    assert!(!c.delete("k").unwrap());
    assert!(!c.version().unwrap().is_empty());
    c.flush_all(0).unwrap();
    assert_eq!(c.get("k2").unwrap(), None);
    drop(c);
    srv.handle.shutdown().unwrap();
}

#[test]
fn expiry_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = McClient::connect(srv.mc).unwrap();
    c.set("past", "x", 0, -1).unwrap();
    assert_eq!(c.get("past").unwrap(), None);
    let now = kvstore_core::item::unix_now() as i64;
    c.set("abs-past", "x", 0, now - 10).unwrap();
    assert_eq!(c.get("abs-past").unwrap(), None);
    c.set("abs-future", "x", 0, now + 1000).unwrap();
    c.set("rel", "x", 0, 1000).unwrap();
    c.set("soon", "x", 0, 1).unwrap();
    assert!(c.get("abs-future").unwrap().is_some());
    assert!(c.get("rel").unwrap().is_some());
    wait_for("a 1 s expiry", || c.get("soon").unwrap().is_none());
    assert!(c.touch("rel", -1).unwrap());
    assert_eq!(c.get("rel").unwrap(), None);
    // flush_all with a delay leaves items until then
    c.set("f", "x", 0, 0).unwrap();
    c.flush_all(1).unwrap();
    assert!(c.get("f").unwrap().is_some());
    wait_for("a delayed flush_all", || c.get("f").unwrap().is_none());
    drop(c);
    srv.handle.shutdown().unwrap();
}

#[test]
fn key_policy_strict_by_default_lenient_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    // memcaslap's keys start with eight 0x10 bytes: docs/PROTOCOL.md refuses them.
    round_trip(
        &mut s,
        b"set \x10\x10key 0 0 1\r\nv\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
    );
    srv.handle.shutdown().unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(kvstore_core::Store::open(tmp.path()).unwrap());
    let handle = kvstore_net::Server::start_with_key_policy(
        store,
        common::config(),
        kvstore_net::protocol::KeyPolicy::MemcachedCompatible,
    )
    .unwrap();
    let mut s = raw(handle.memcached_addr().unwrap());
    round_trip(&mut s, b"set \x10\x10key 0 0 1\r\nv\r\n", b"STORED\r\n");
    round_trip(
        &mut s,
        b"get \x10\x10key\r\n",
        b"VALUE \x10\x10key 0 1\r\nv\r\nEND\r\n",
    );
    round_trip(
        &mut s,
        b"get a\rb\r\n",
        b"CLIENT_ERROR bad command line format\r\n",
    );
    drop(s);
    handle.shutdown().unwrap();
}

#[test]
fn refused_set_removes_the_old_value_in_the_memcached_dialect_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::config();
    cfg.max_value_bytes = 100;
    let srv = common::start_with(tmp.path(), cfg);
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"set k 0 0 3\r\nold\r\n", b"STORED\r\n");
    round_trip(&mut s, b"set a 0 0 3\r\nold\r\n", b"STORED\r\n");
    let big = [b"set k 0 0 101\r\n".as_slice(), &[b'x'; 101], b"\r\n"].concat();
    round_trip(&mut s, &big, b"SERVER_ERROR object too large for cache\r\n");
    // An append over the limit leaves the value alone, as memcached does.
    let big = [b"append a 0 0 101\r\n".as_slice(), &[b'x'; 101], b"\r\n"].concat();
    round_trip(&mut s, &big, b"SERVER_ERROR object too large for cache\r\n");
    round_trip(&mut s, b"get k a\r\n", b"VALUE a 0 3\r\nold\r\nEND\r\n");
    // With noreply the refusal is silent, and the old value still goes.
    round_trip(&mut s, b"set a 0 0 3\r\nold\r\n", b"STORED\r\n");
    let big = [
        b"set a 0 0 101 noreply\r\n".as_slice(),
        &[b'x'; 101],
        b"\r\n",
    ]
    .concat();
    s.write_all(&big).unwrap();
    round_trip(&mut s, b"get a\r\n", b"END\r\n");
    s.write_all(b"stats\r\n").unwrap();
    let mut too_large = None;
    loop {
        let l = line(&mut s);
        if l == "END\r\n" {
            break;
        }
        if let Some(v) = l.strip_prefix("STAT store_too_large ") {
            too_large = Some(v.trim_end().to_string());
        }
    }
    assert_eq!(too_large.as_deref(), Some("3"));

    // The seed dialect keeps the old value.
    let mut s = raw(srv.seed);
    round_trip(&mut s, b"set k 3\r\nold\r\n", b"STORED\r\n");
    let big = [b"set k 101\r\n".as_slice(), &[b'x'; 101], b"\r\n"].concat();
    round_trip(&mut s, &big, b"NOT-STORED\r\n");
    round_trip(&mut s, b"get k\r\n", b"VALUE k 3\r\nold\r\nEND\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn lengths_memcached_refuses_do_not_swallow_what_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    // Past i32::MAX - 2: a malformed line, and the next bytes are
    // commands (before, they were swallowed as the announced block and the
    // connection hung).
    for len in ["4294967295", "2147483646", "-1", "18446744073709551615"] {
        let req = format!("set k 0 0 {len}\r\nset k 0 0 1\r\nv\r\n");
        round_trip(
            &mut s,
            req.as_bytes(),
            b"CLIENT_ERROR bad command line format\r\nSTORED\r\n",
        );
    }
    srv.handle.shutdown().unwrap();
}
