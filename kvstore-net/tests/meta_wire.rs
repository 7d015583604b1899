//! The meta commands over real TCP, on bytes: every command and flag group,
//! the lease and stale-while-revalidate flows, quiet pipelines, meta mixed
//! with text commands on one connection, and errors that leave the
//! connection usable. The expected bytes are memcached 1.6's replies to the
//! same requests, with the cas numbers the store hands out.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{expect, line, raw, round_trip, start, start_with, TestServer};

fn server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    (dir, s)
}

/// Sends `request`, reads one line and returns it without `\r\n`.
fn ask(s: &mut TcpStream, request: &str) -> String {
    s.write_all(request.as_bytes()).unwrap();
    let l = line(s);
    l.strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("{l:?} does not end with CRLF"))
        .to_string()
}

/// Sends `request` and expects `reply`, except that a remaining TTL
/// (`t<n>`) may be one less: a second may pass between the request that
/// set the TTL and this one. Keep TTLs at two digits (`t30`), so the reply
/// keeps its length.
fn round_trip_ttl(s: &mut TcpStream, request: &[u8], reply: &[u8]) {
    s.write_all(request).unwrap();
    let mut got = vec![0u8; reply.len()];
    s.read_exact(&mut got).unwrap();
    let (got, want) = (
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(reply),
    );
    let ttl = |t: &str| t.strip_prefix('t').and_then(|n| n.parse::<i64>().ok());
    let words = |x: &str| {
        x.split([' ', '\r', '\n'])
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (g, w) = (words(&got), words(&want));
    let same = g.len() == w.len()
        && g.iter().zip(&w).all(|(a, b)| {
            a == b || matches!((ttl(a), ttl(b)), (Some(a), Some(b)) if a == b || a == b - 1)
        });
    assert!(same, "{request:?}: got {got:?}, want {want:?}");
}

/// The number after ` <flag>` in a reply line.
fn flag_value(reply: &str, flag: char) -> u64 {
    reply
        .split(' ')
        .find_map(|t| t.strip_prefix(flag).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no {flag} in {reply:?}"))
}

#[test]
fn set_and_get_with_return_flags() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    let stored = ask(&mut s, "ms k 2 T0 F5 c k Oab s\r\nhi\r\n");
    let cas = flag_value(&stored, 'c');
    assert_eq!(stored, format!("HD c{cas} kk Oab s2"));
    let hit = ask(&mut s, "mg k v t f s c k Oxx h l\r\n");
    expect(&mut s, b"hi\r\n");
    // Seconds since the store: 0, or 1 if a second boundary passed.
    let idle = flag_value(&hit, 'l');
    assert!(idle <= 1, "{hit}");
    assert_eq!(hit, format!("VA 2 t-1 f5 s2 c{cas} kk Oxx h0 l{idle}"));
    // The first read marked the item fetched; `u` reads without marking.
    round_trip(&mut s, b"mg k h\r\n", b"HD h1\r\n");
    round_trip(&mut s, b"mg k\r\n", b"HD\r\n");
    round_trip(&mut s, b"mg nope v\r\n", b"EN\r\n");
    round_trip(&mut s, b"mg nope k O9\r\n", b"EN knope O9\r\n");
    // `C` with `v`: the value only if the cas changed.
    round_trip(&mut s, format!("mg k v C{cas}\r\n").as_bytes(), b"HD\r\n");
    round_trip(&mut s, b"mg k v C1\r\n", b"VA 2\r\nhi\r\n");
    // TTLs: `T` on `ms`, `t` and `T` on `mg`.
    round_trip(&mut s, b"ms t 1 T50\r\nx\r\n", b"HD\r\n");
    round_trip_ttl(&mut s, b"mg t t\r\n", b"HD t50\r\n");
    round_trip(&mut s, b"mg t T30 t\r\n", b"HD t30\r\n");
    round_trip_ttl(&mut s, b"mg t t v\r\n", b"VA 1 t30\r\nx\r\n");
}

#[test]
fn set_modes_and_cas() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"ms k 1 MR\r\nx\r\n", b"NS\r\n");
    round_trip(&mut s, b"ms k 1 MA\r\nx\r\n", b"NS\r\n");
    round_trip(&mut s, b"ms k 1 ME\r\nx\r\n", b"HD\r\n");
    round_trip(&mut s, b"ms k 1 ME\r\ny\r\n", b"NS\r\n");
    round_trip(&mut s, b"ms k 1 MR\r\ny\r\n", b"HD\r\n");
    round_trip(&mut s, b"ms k 1 MA s\r\nz\r\n", b"HD s2\r\n");
    round_trip(&mut s, b"ms k 1 MP s\r\na\r\n", b"HD s3\r\n");
    round_trip(&mut s, b"mg k v\r\n", b"VA 3\r\nayz\r\n");
    // Append with `N` creates the item on a miss.
    round_trip(&mut s, b"ms new 2 MA N0\r\nab\r\n", b"HD\r\n");
    round_trip(&mut s, b"mg new v\r\n", b"VA 2\r\nab\r\n");
    // Compare and swap with `C`.
    let cas = flag_value(&ask(&mut s, "mg k c\r\n"), 'c');
    round_trip(&mut s, b"ms k 1 C1 c\r\nq\r\n", b"EX c0\r\n");
    let stored = ask(&mut s, &format!("ms k 1 C{cas} c\r\nq\r\n"));
    assert!(flag_value(&stored, 'c') > cas, "{stored}");
    round_trip(&mut s, b"ms absent 1 C5\r\nq\r\n", b"NF\r\n");
    // Client flags and the text view of the same item.
    round_trip(&mut s, b"ms f 2 F77 T0\r\nab\r\n", b"HD\r\n");
    round_trip(&mut s, b"get f\r\n", b"VALUE f 77 2\r\nab\r\nEND\r\n");
    round_trip(&mut s, b"mg f f v\r\n", b"VA 2 f77\r\nab\r\n");
}

#[test]
fn delete_and_invalidate() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"md nothere\r\n", b"NF\r\n");
    round_trip(&mut s, b"md nothere O1 k\r\n", b"NF O1 knothere\r\n");
    round_trip(&mut s, b"ms d 1\r\nx\r\n", b"HD\r\n");
    round_trip(&mut s, b"md d C1\r\n", b"EX\r\n");
    let cas = flag_value(&ask(&mut s, "mg d c\r\n"), 'c');
    round_trip(
        &mut s,
        format!("md d C{cas} k\r\n").as_bytes(),
        b"HD kd\r\n",
    );
    round_trip(&mut s, b"mg d\r\n", b"EN\r\n");
    // `x` empties the value and keeps the item.
    round_trip(&mut s, b"ms e 3 F9\r\nabc\r\n", b"HD\r\n");
    round_trip(&mut s, b"md e x F4\r\n", b"HD\r\n");
    round_trip(&mut s, b"mg e v f\r\n", b"VA 0 f4\r\n\r\n");
}

#[test]
fn stale_while_revalidate() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"ms s 1 T0\r\nx\r\n", b"HD\r\n");
    let cas = flag_value(&ask(&mut s, "mg s c\r\n"), 'c');
    // `md I` marks stale with a new cas and a TTL.
    round_trip(&mut s, b"md s I T30\r\n", b"HD\r\n");
    // The first reader wins the recache, later ones see another won.
    let won = ask(&mut s, "mg s v c t\r\n");
    let stale_cas = flag_value(&won, 'c');
    assert!(stale_cas > cas);
    let ttl = flag_value(&won, 't');
    assert!(ttl == 30 || ttl == 29, "{won}");
    assert_eq!(won, format!("VA 1 c{stale_cas} t{ttl} X W"));
    expect(&mut s, b"x\r\n");
    round_trip(&mut s, b"mg s v\r\n", b"VA 1 Z X\r\nx\r\n");
    // The winner's recache with the old cas and `I` is stored, and stays
    // stale (it is older than the invalidation).
    round_trip(
        &mut s,
        format!("ms s 1 C{cas} I\r\ny\r\n").as_bytes(),
        b"HD\r\n",
    );
    round_trip_ttl(&mut s, b"mg s v t\r\n", b"VA 1 t30 Z X\r\ny\r\n");
    // A plain store clears the marks.
    round_trip(&mut s, b"ms s 1\r\nz\r\n", b"HD\r\n");
    round_trip(&mut s, b"mg s v\r\n", b"VA 1\r\nz\r\n");
}

#[test]
fn leases_on_a_miss_and_before_expiry() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    // `N`: the first miss creates an empty item and wins it.
    round_trip(&mut s, b"mg l N30 s t v\r\n", b"VA 0 s0 t30 W\r\n\r\n");
    round_trip_ttl(&mut s, b"mg l N30 s t v\r\n", b"VA 0 s0 t30 Z\r\n\r\n");
    round_trip(&mut s, b"mg l v\r\n", b"VA 0 Z\r\n\r\n");
    round_trip(&mut s, b"ms l 3 T30\r\nnew\r\n", b"HD\r\n");
    round_trip_ttl(&mut s, b"mg l v t\r\n", b"VA 3 t30\r\nnew\r\n");
    // `R`: less TTL left than the token wins once.
    round_trip(&mut s, b"ms r 1 T10\r\nx\r\n", b"HD\r\n");
    round_trip(&mut s, b"mg r R30 v\r\n", b"VA 1 W\r\nx\r\n");
    round_trip(&mut s, b"mg r R30 v\r\n", b"VA 1 Z\r\nx\r\n");
    // An item without a TTL never wins by `R`.
    round_trip(&mut s, b"ms p 1\r\nx\r\n", b"HD\r\n");
    round_trip(&mut s, b"mg p R30 v\r\n", b"VA 1\r\nx\r\n");
}

#[test]
fn arithmetic() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"ma n\r\n", b"NF\r\n");
    round_trip(&mut s, b"ma n N0 J10 v\r\n", b"VA 2\r\n10\r\n");
    round_trip(&mut s, b"ma n v\r\n", b"VA 2\r\n11\r\n");
    round_trip(&mut s, b"ma n MD D5 v t\r\n", b"VA 1 t-1\r\n6\r\n");
    round_trip(&mut s, b"ma n M- D100 v\r\n", b"VA 1\r\n0\r\n");
    round_trip(&mut s, b"ma n\r\n", b"HD\r\n");
    round_trip(&mut s, b"ma n C1 v\r\n", b"EX\r\n");
    let cas = flag_value(&ask(&mut s, "mg n c\r\n"), 'c');
    let reply = ask(&mut s, &format!("ma n C{cas} c v\r\n"));
    assert!(flag_value(&reply, 'c') > cas, "{reply}");
    expect(&mut s, b"2\r\n");
    round_trip(&mut s, b"ma n T30 t\r\n", b"HD t30\r\n");
    round_trip(&mut s, b"ma m N0 J5 T30 t v\r\n", b"VA 1 t30\r\n5\r\n");
    round_trip(&mut s, b"ms w 2\r\nab\r\n", b"HD\r\n");
    round_trip(
        &mut s,
        b"ma w\r\n",
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    round_trip(
        &mut s,
        b"ms big 20\r\n18446744073709551615\r\nma big v\r\n",
        b"HD\r\nVA 1\r\n0\r\n",
    );
    // The text commands see the same counter.
    round_trip(&mut s, b"incr n 1\r\n", b"4\r\n");
}

#[test]
fn quiet_pipelines_end_with_mn() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    // Only failures and hits are sent back; `mn` closes the batch.
    round_trip(
        &mut s,
        b"ms a 1 q\r\n1\r\nms b 1 q\r\n2\r\nms a 1 q ME\r\n3\r\n\
          mg a q v k\r\nmg zz q v k\r\nmg b q v k\r\nmd zz q\r\nmd b q\r\n\
          ma a q\r\nma zz q\r\nmn\r\n",
        b"NS\r\nVA 1 ka\r\n1\r\nVA 1 kb\r\n2\r\nNF\r\nNF\r\nMN\r\n",
    );
    round_trip(&mut s, b"mg a v\r\nmg b v\r\n", b"VA 1\r\n2\r\nEN\r\n");
}

#[test]
fn base64_keys_and_debug() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    // " \r\n\0" as a key: only possible in base64.
    round_trip(&mut s, b"ms IA0KAA== 2 b\r\nhi\r\n", b"HD\r\n");
    round_trip(
        &mut s,
        b"mg IA0KAA== b k v\r\n",
        b"VA 2 kIA0KAA== b\r\nhi\r\n",
    );
    round_trip(&mut s, b"ms Zm9v 2 b T0\r\nhi\r\n", b"HD\r\n");
    round_trip(&mut s, b"get foo\r\n", b"VALUE foo 0 2\r\nhi\r\nEND\r\n");
    let debug = ask(&mut s, "me foo\r\n");
    let cas = flag_value(&ask(&mut s, "mg foo c u\r\n"), 'c');
    // Seconds since the `get`: 0, or 1 if a second boundary passed.
    let la = if debug.contains(" la=0 ") { 0 } else { 1 };
    assert_eq!(
        debug,
        format!("ME foo exp=-1 la={la} cas={cas} fetch=yes cls=1 size=41")
    );
    round_trip(&mut s, b"me nope\r\n", b"EN\r\n");
    let debug = ask(&mut s, "me Zm9v b\r\n");
    assert!(debug.starts_with("ME Zm9v exp=-1 "), "{debug}");
    round_trip(&mut s, b"md Zm9v b q\r\nmg foo v\r\n", b"EN\r\n");
}

#[test]
fn meta_and_text_share_a_connection() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    round_trip(
        &mut s,
        b"set t 3 0 1\r\nx\r\nmg t v f\r\nms t 1 F4\r\ny\r\ngets t\r\nmn\r\nversion\r\n",
        b"STORED\r\nVA 1 f3\r\nx\r\nHD\r\n",
    );
    let value = line(&mut s);
    assert!(value.starts_with("VALUE t 4 1 "), "{value}");
    expect(&mut s, b"y\r\nEND\r\nMN\r\n");
    let version = line(&mut s);
    assert!(version.starts_with("VERSION "), "{version}");
    // An `ms` data block is never run as a command.
    round_trip(&mut s, b"ms c 5\r\nstats\r\nmn\r\n", b"HD\r\nMN\r\n");
    round_trip(&mut s, b"get c\r\n", b"VALUE c 0 5\r\nstats\r\nEND\r\n");
}

#[test]
fn errors_leave_the_connection_usable() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    for (request, reply) in [
        (&b"mg\r\n"[..], &b"ERROR\r\n"[..]),
        (b"mx k\r\n", b"ERROR\r\n"),
        (b"mg k Z\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"mg k v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
        (
            b"mg k Tx\r\n",
            b"CLIENT_ERROR bad token in command line format\r\n",
        ),
        (
            b"md k Tx\r\n",
            b"CLIENT_ERROR invalid or duplicate flag\r\n",
        ),
        (b"mg !!!! b\r\n", b"CLIENT_ERROR error decoding key\r\n"),
        (b"ms k x\r\n", b"CLIENT_ERROR bad command line format\r\n"),
        (b"ms k 2 Z\r\nhi\r\n", b"CLIENT_ERROR invalid flag\r\n"),
        (b"ms k 2\r\nhiX\r\n", b"CLIENT_ERROR bad data chunk\r\n"),
        (
            b"ma k MX\r\n",
            b"CLIENT_ERROR invalid mode for ma M token\r\n",
        ),
    ] {
        round_trip(&mut s, request, reply);
        round_trip(&mut s, b"mn\r\n", b"MN\r\n");
    }
}

#[test]
fn oversized_ms_is_skipped_and_removes_the_old_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config();
    config.max_value_bytes = 1024;
    let srv = start_with(dir.path(), config);
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"ms k 1\r\nx\r\n", b"HD\r\n");
    let mut request = b"ms k 5000 T0\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'v', 5000));
    request.extend_from_slice(b"\r\nmg k v\r\n");
    round_trip(
        &mut s,
        &request,
        b"SERVER_ERROR object too large for cache\r\nEN\r\n",
    );
}

#[test]
fn meta_commands_are_counted_in_stats() {
    let (_d, srv) = server();
    let mut s = raw(srv.mc);
    round_trip(
        &mut s,
        b"ms k 1\r\nx\r\nmg k\r\nmg nope\r\nmd k\r\nmn\r\n",
        b"HD\r\nHD\r\nEN\r\nHD\r\nMN\r\n",
    );
    s.write_all(b"stats\r\n").unwrap();
    let mut stats = String::new();
    while !stats.ends_with("END\r\n") {
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        stats.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for want in [
        "STAT cmd_set 1\r\n",
        "STAT cmd_get 2\r\n",
        "STAT get_hits 1\r\n",
        "STAT get_misses 1\r\n",
        "STAT delete_hits 1\r\n",
    ] {
        assert!(stats.contains(want), "{want:?} not in {stats}");
    }
}
