//! Hostile input, for every dialect (seed, memcached text, meta and
//! binary).
//!
//! - Parser properties (pure, proptest): arbitrary bytes (random, and
//!   random sequences of protocol fragments), fed in arbitrary chunks the
//!   way a connection feeds them, give exactly the steps they give whole;
//!   every step makes progress; while a request is incomplete the bytes
//!   held never exceed the limits (a line cap, plus one data block of at
//!   most `max_value_bytes`); a line past its cap closes the connection.
//! - The real server (child process): random hostile streams in random
//!   chunks on many connections; the server never panics, keeps serving
//!   other clients, and its replies are always lines of the dialect.
//! - Oversize announcements: a 4 GB `set` streamed 64 MiB deep, and an
//!   endless command line, against the real server: peak RSS (VmHWM) growth
//!   stays bounded and is reported.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::{server_command, spawn, ChildServer, DEADLINE};
use kvstore_net::protocol::binary::{self, Header, HEADER_BYTES};
use kvstore_net::protocol::{
    memcached, meta, seed, KeyPolicy, Parsed, Recovery, Rejection, MAX_LINE_BYTES,
    MAX_RETRIEVAL_LINE_BYTES,
};
use kvstore_net::{Client, McClient};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_kvstore-server");
const MAX_VALUE: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Dialect {
    Seed,
    Memcached,
    Meta,
    /// What the memcached port runs: meta lines to the meta parser, the
    /// rest to the text parser (the handler's rule).
    MemcachedPort,
    Binary,
}

/// One parse step: a description, the bytes it used (or skips), whether the
/// connection closes.
fn step(d: Dialect, buf: &[u8]) -> Option<(String, u64, bool)> {
    fn conv<R: std::fmt::Debug, J: std::fmt::Debug + Rejection>(
        p: Parsed<R, J>,
    ) -> Option<(String, u64, bool)> {
        match p {
            Parsed::Request { request, consumed } => {
                assert!(consumed > 0, "a request that used no bytes");
                Some((format!("{request:?}"), consumed as u64, false))
            }
            Parsed::Incomplete => None,
            Parsed::Reject(r) => match r.recovery() {
                Recovery::Discard(n) => {
                    assert!(n > 0, "a reject that skips nothing: {r:?}");
                    Some((format!("{r:?}"), n, false))
                }
                Recovery::Close => Some((format!("{r:?}"), 0, true)),
            },
        }
    }
    match d {
        Dialect::Seed => conv(seed::parse(
            buf,
            &seed::Limits {
                max_value_bytes: MAX_VALUE,
                keys: KeyPolicy::Strict,
            },
        )),
        Dialect::Memcached => conv(memcached::parse(
            buf,
            &memcached::Limits {
                max_value_bytes: MAX_VALUE,
                keys: KeyPolicy::Strict,
            },
        )),
        Dialect::Meta => conv(meta::parse(
            buf,
            &memcached::Limits {
                max_value_bytes: MAX_VALUE,
                keys: KeyPolicy::Strict,
            },
        )),
        Dialect::Binary => conv(binary::parse(
            buf,
            &memcached::Limits {
                max_value_bytes: MAX_VALUE,
                keys: KeyPolicy::Strict,
            },
        )),
        Dialect::MemcachedPort if meta::is_meta(buf) => step(Dialect::Meta, buf),
        Dialect::MemcachedPort => step(Dialect::Memcached, buf),
    }
}

fn is_retrieval(buf: &[u8]) -> bool {
    [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|p| buf.starts_with(p))
}

/// Feeds `input` in chunks ending at `cuts` as a connection does: parse
/// what is buffered, drop consumed or skipped bytes (a skip may reach into
/// bytes not received yet), wait for more when incomplete. Returns the
/// steps, and checks the buffering bound on every wait.
fn feed(d: Dialect, input: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut steps = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut skip: u64 = 0;
    let mut fed = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.push(input.len());
    ends.sort_unstable();
    for end in ends {
        if end <= fed {
            continue;
        }
        let mut chunk = &input[fed..end];
        fed = end;
        let s = (skip.min(chunk.len() as u64)) as usize;
        skip -= s as u64;
        chunk = &chunk[s..];
        buf.extend_from_slice(chunk);
        loop {
            if buf.is_empty() {
                break;
            }
            match step(d, &buf) {
                None => {
                    let bound = match d {
                        // One packet: header, extras, key and value.
                        Dialect::Binary => binary::max_request_bytes(MAX_VALUE),
                        _ if is_retrieval(&buf) => MAX_RETRIEVAL_LINE_BYTES + 2,
                        _ => MAX_LINE_BYTES + 2 + MAX_VALUE + 2,
                    };
                    assert!(
                        buf.len() <= bound,
                        "{d:?}: {} bytes held for an incomplete request (bound {bound})",
                        buf.len()
                    );
                    break;
                }
                Some((what, n, close)) => {
                    steps.push(what);
                    if close {
                        return steps;
                    }
                    let n = n as usize;
                    if n <= buf.len() {
                        buf.drain(..n);
                    } else {
                        skip = (n - buf.len()) as u64;
                        buf.clear();
                        // Skip the rest of this chunk too.
                        break;
                    }
                }
            }
        }
    }
    steps
}

fn fragments() -> impl Strategy<Value = Vec<u8>> {
    let frag = prop_oneof![
        Just(b"set ".to_vec()),
        Just(b"get ".to_vec()),
        Just(b"gets ".to_vec()),
        Just(b"delete".to_vec()),
        Just(b"add ".to_vec()),
        Just(b"cas ".to_vec()),
        Just(b"incr ".to_vec()),
        Just(b"append ".to_vec()),
        Just(b"flush_all".to_vec()),
        Just(b"stats ".to_vec()),
        Just(b"cachedump ".to_vec()),
        Just(b"lru_crawler metadump ".to_vec()),
        Just(b"cache_memlimit ".to_vec()),
        Just(b"gat ".to_vec()),
        Just(b"GET / HTTP/1.1".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"k".to_vec()),
        Just(b"0".to_vec()),
        Just(b"5".to_vec()),
        Just(b"64".to_vec()),
        Just(b"65".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"noreply".to_vec()),
        Just(b"18446744073709551616".to_vec()),
        Just(b"\x00".to_vec()),
        Just(b"\xff".to_vec()),
        Just(vec![b'x'; 300]),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(frag, 0..60).prop_map(|v| v.concat())
}

fn meta_fragments() -> impl Strategy<Value = Vec<u8>> {
    let frag = prop_oneof![
        Just(b"mg ".to_vec()),
        Just(b"ms ".to_vec()),
        Just(b"md ".to_vec()),
        Just(b"ma ".to_vec()),
        Just(b"mn".to_vec()),
        Just(b"me ".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"k".to_vec()),
        Just(b"5".to_vec()),
        Just(b"64".to_vec()),
        Just(b"65".to_vec()),
        Just(b"2147483646".to_vec()),
        Just(b"b".to_vec()),
        Just(b"Zm9v".to_vec()),
        Just(b"v".to_vec()),
        Just(b"q".to_vec()),
        Just(b"O".to_vec()),
        Just(b"T-1".to_vec()),
        Just(b"N30".to_vec()),
        Just(b"MA".to_vec()),
        Just(b"MX".to_vec()),
        Just(b"C18446744073709551616".to_vec()),
        Just(b"\x00".to_vec()),
        Just(b"\xff".to_vec()),
        Just(vec![b'x'; 300]),
        proptest::collection::vec(any::<u8>(), 1..8),
    ];
    proptest::collection::vec(frag, 0..60).prop_map(|v| v.concat())
}

/// A binary packet header with the given fields (magic right).
fn binary_header(opcode: u8, key_len: u16, extras_len: u8, body_len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    Header {
        magic: binary::REQUEST_MAGIC,
        opcode,
        key_len,
        extras_len,
        body_len,
        opaque: 7,
        ..Header::default()
    }
    .encode(&mut out);
    out
}

/// Binary packets, well formed and not: right headers with short, long or
/// missing bodies, wrong lengths, unknown opcodes, values over the limit,
/// stray bytes.
fn binary_fragments() -> impl Strategy<Value = Vec<u8>> {
    let frag = prop_oneof![
        // get k
        Just([binary_header(0x00, 1, 0, 1), b"k".to_vec()].concat()),
        // getkq k
        Just([binary_header(0x0d, 1, 0, 1), b"k".to_vec()].concat()),
        // set k, 5-byte value
        Just(
            [
                binary_header(0x01, 1, 8, 14),
                vec![0; 8],
                b"kvalue".to_vec()
            ]
            .concat()
        ),
        // setq k with a value over MAX_VALUE
        Just(
            [
                binary_header(0x11, 1, 8, 9 + 65),
                vec![0; 8],
                b"k".to_vec(),
                vec![b'x'; 65]
            ]
            .concat()
        ),
        // incr k
        Just([binary_header(0x05, 1, 20, 21), vec![0; 20], b"k".to_vec()].concat()),
        // noop, version, quit
        Just(binary_header(0x0a, 0, 0, 0)),
        Just(binary_header(0x0b, 0, 0, 0)),
        Just(binary_header(0x07, 0, 0, 0)),
        // unknown opcode with a body
        Just([binary_header(0x50, 2, 2, 8), b"eekkvvvv".to_vec()].concat()),
        // lengths that do not add up
        Just(binary_header(0x00, 5, 0, 2)),
        Just(binary_header(0x01, 1, 8, u32::MAX)),
        Just(binary_header(0x00, 300, 0, 300)),
        // a header cut short, and stray bytes
        Just(binary_header(0x01, 1, 8, 9)[..10].to_vec()),
        Just(vec![binary::REQUEST_MAGIC]),
        (
            any::<u8>(),
            0u16..8,
            prop_oneof![Just(0u8), Just(4), Just(8), Just(20), any::<u8>()],
            0u32..80
        )
            .prop_map(|(op, k, e, b)| binary_header(op, k, e, b)),
        proptest::collection::vec(any::<u8>(), 1..30),
    ];
    proptest::collection::vec(frag, 0..30).prop_map(|v| v.concat())
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0usize..5000, 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn seed_chunked_arbitrary_bytes_parse_as_whole(input in fragments(), cuts in cuts()) {
        let whole = feed(Dialect::Seed, &input, &[]);
        prop_assert_eq!(feed(Dialect::Seed, &input, &cuts), whole);
    }

    #[test]
    fn memcached_chunked_arbitrary_bytes_parse_as_whole(input in fragments(), cuts in cuts()) {
        let whole = feed(Dialect::Memcached, &input, &[]);
        prop_assert_eq!(feed(Dialect::Memcached, &input, &cuts), whole);
    }

    #[test]
    fn meta_chunked_arbitrary_bytes_parse_as_whole(input in meta_fragments(), cuts in cuts()) {
        for d in [Dialect::Meta, Dialect::MemcachedPort] {
            let whole = feed(d, &input, &[]);
            prop_assert_eq!(feed(d, &input, &cuts), whole);
        }
    }

    #[test]
    fn memcached_port_mixed_streams_parse_as_whole(
        text in fragments(),
        meta in meta_fragments(),
        cuts in cuts(),
    ) {
        let input = [text, meta].concat();
        let whole = feed(Dialect::MemcachedPort, &input, &[]);
        prop_assert_eq!(feed(Dialect::MemcachedPort, &input, &cuts), whole);
    }

    #[test]
    fn binary_chunked_packets_parse_as_whole(input in binary_fragments(), cuts in cuts()) {
        let whole = feed(Dialect::Binary, &input, &[]);
        prop_assert_eq!(feed(Dialect::Binary, &input, &cuts), whole);
    }

    #[test]
    fn random_bytes_in_random_chunks(
        input in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in cuts(),
    ) {
        for d in [Dialect::Seed, Dialect::Memcached, Dialect::Meta, Dialect::MemcachedPort, Dialect::Binary] {
            let whole = feed(d, &input, &[]);
            prop_assert_eq!(feed(d, &input, &cuts), whole);
        }
    }

    #[test]
    fn lines_past_the_cap_close(
        prefix in prop_oneof![
            Just(&b"set k"[..]), Just(&b"delete "[..]), Just(&b"incr "[..]), Just(&b"x"[..]),
            Just(&b"mg k"[..]), Just(&b"ms k 5 "[..]),
        ],
        extra in 1usize..200,
        cuts in cuts(),
    ) {
        let mut input = prefix.to_vec();
        input.resize(MAX_LINE_BYTES + extra + 2, b'a');
        for d in [Dialect::Seed, Dialect::Memcached, Dialect::Meta, Dialect::MemcachedPort] {
            let steps = feed(d, &input, &cuts);
            prop_assert_eq!(steps.len(), 1, "{:?}", steps);
            prop_assert!(steps[0].contains("Close"), "{:?}", steps);
        }
    }
}

/// Reads what the server sends until it closes or stays quiet for `quiet`.
/// Everything the server sends until it closes. The caller has shut down
/// its sending side, and the server closes a connection at EOF, after its
/// last reply, so no wait on a quiet period is needed (a loaded machine
/// can pause longer than any such period mid-reply). A reset ends the
/// read too: the server may close with bytes unread after a line past its
/// cap.
fn drain_to_eof(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(
                    !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                    "the server did not close the connection within {DEADLINE:?} of EOF"
                );
                break;
            }
        }
    }
    out
}

fn random_stream(rng: &mut StdRng) -> Vec<u8> {
    let pieces: &[&[u8]] = &[
        b"mg ",
        b"ms ",
        b"md ",
        b"ma ",
        b"mn",
        b"me ",
        b"v",
        b"q",
        b"N30",
        b"I",
        b"b",
        b"Zm9v",
        b"set ",
        b"get ",
        b"gets ",
        b"delete",
        b"delete ",
        b"add ",
        b"cas ",
        b"incr ",
        b"decr ",
        b"append ",
        b"touch ",
        b"flush_all",
        b"stats",
        b"stats ",
        b"detail on",
        b"cachedump 1 ",
        b"items",
        b"lru_crawler metadump all",
        b"cache_memlimit ",
        b"shutdown",
        b"verbosity ",
        b"version",
        b" ",
        b"\r\n",
        b"\n",
        b"k",
        b"1",
        b"0",
        b"noreply",
        b"\x00\xff",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(1..80) {
        if rng.gen_range(0..10) == 0 {
            let n = rng.gen_range(1..40);
            out.extend((0..n).map(|_| rng.gen::<u8>()));
        } else {
            out.extend_from_slice(pieces[rng.gen_range(0..pieces.len())]);
        }
    }
    out
}

fn check_alive(srv: &ChildServer, round: usize) {
    let mut c = Client::connect(srv.seed).unwrap();
    c.set(format!("alive{round}"), "yes").unwrap();
    assert_eq!(c.get(format!("alive{round}")).unwrap(), b"yes");
    let mut m = McClient::connect(srv.mc.unwrap()).unwrap();
    assert!(m
        .version()
        .unwrap()
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.'));
    let log = srv.stderr.lock().unwrap();
    assert!(!log.contains("panicked"), "server panicked:\n{log}");
}

/// Every reply line of the seed dialect is one of its forms.
fn seed_replies_well_formed(out: &[u8]) -> bool {
    let mut rest = out;
    while !rest.is_empty() {
        let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
            return false;
        };
        let line = &rest[..nl];
        rest = &rest[nl + 2..];
        if let Some((_, len)) = seed::parse_value_header(line) {
            if rest.len() < len + 2 || &rest[len..len + 2] != b"\r\n" {
                return false;
            }
            rest = &rest[len + 2..];
            continue;
        }
        if seed::parse_status(line).is_none() && line != b"END" {
            return false;
        }
    }
    true
}

#[test]
fn hostile_streams_against_the_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = server_command(BIN, &tmp.path().join("data"));
    cmd.args(["--max-value-bytes", "4096", "--idle-timeout", "5"]);
    let srv = spawn(cmd);
    let seed_value: u64 = rand::thread_rng().gen();
    let mut rng = StdRng::seed_from_u64(seed_value);
    let mut bytes_sent = 0usize;
    let streams = 120;
    for round in 0..streams {
        let mc = round % 2 == 1;
        let addr = if mc { srv.mc.unwrap() } else { srv.seed };
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let input = random_stream(&mut rng);
        bytes_sent += input.len();
        let mut pos = 0;
        while pos < input.len() {
            let n = rng.gen_range(1..=(input.len() - pos).min(64));
            if s.write_all(&input[pos..pos + n]).is_err() {
                break; // the server closed (line cap, HTTP): allowed
            }
            pos += n;
        }
        let _ = s.shutdown(Shutdown::Write);
        let out = drain_to_eof(&mut s);
        if !mc {
            assert!(
                seed_replies_well_formed(&out),
                "seed {seed_value} round {round}: malformed reply {:?} to {:?}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&input)
            );
        } else {
            assert!(
                out.is_empty() || out.ends_with(b"\r\n"),
                "partial reply line"
            );
        }
        if round % 20 == 19 {
            check_alive(&srv, round);
        }
    }
    check_alive(&srv, streams);
    println!("hostile: {streams} random streams, {bytes_sent} bytes, server alive, no panic (seed {seed_value})");
}

/// Every byte the binary dialect sends belongs to a whole response packet.
fn binary_replies_well_formed(out: &[u8]) -> bool {
    let mut rest = out;
    while !rest.is_empty() {
        match binary::Response::decode(rest) {
            Ok(Some((_, n))) => rest = &rest[n..],
            _ => return false,
        }
    }
    true
}

/// A binary stream: a valid packet first (so the memcached port picks the
/// binary protocol), then packets, broken headers and random bytes.
fn random_binary_stream(rng: &mut StdRng) -> Vec<u8> {
    let set = [
        binary_header(0x01, 1, 8, 14),
        vec![0; 8],
        b"kvalue".to_vec(),
    ]
    .concat();
    let pieces: [Vec<u8>; 10] = [
        [binary_header(0x00, 1, 0, 1), b"k".to_vec()].concat(),
        [binary_header(0x09, 1, 0, 1), b"q".to_vec()].concat(),
        set.clone(),
        [
            binary_header(0x11, 1, 8, 9 + 5000),
            vec![0; 8],
            b"k".to_vec(),
            vec![b'x'; 5000],
        ]
        .concat(),
        [binary_header(0x05, 1, 20, 21), vec![0; 20], b"n".to_vec()].concat(),
        [binary_header(0x0e, 1, 0, 2), b"kA".to_vec()].concat(),
        binary_header(0x0a, 0, 0, 0),
        binary_header(0x10, 0, 0, 0),
        [binary_header(0x50, 2, 2, 8), b"eekkvvvv".to_vec()].concat(),
        binary_header(0x08, 0, 0, 0),
    ];
    let mut out = set;
    for _ in 0..rng.gen_range(1..40) {
        match rng.gen_range(0..20) {
            0 => {
                let n = rng.gen_range(1..40);
                out.extend((0..n).map(|_| rng.gen::<u8>()));
            }
            1 => {
                let mut h = [0u8; HEADER_BYTES];
                rng.fill(&mut h[..]);
                h[0] = binary::REQUEST_MAGIC;
                out.extend_from_slice(&h);
            }
            _ => out.extend_from_slice(&pieces[rng.gen_range(0..pieces.len())]),
        }
    }
    out
}

#[test]
fn hostile_binary_streams_against_the_real_server() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = server_command(BIN, &tmp.path().join("data"));
    cmd.args(["--max-value-bytes", "4096", "--idle-timeout", "5"]);
    let srv = spawn(cmd);
    let seed_value: u64 = rand::thread_rng().gen();
    let mut rng = StdRng::seed_from_u64(seed_value);
    let mut bytes_sent = 0usize;
    let streams = 80;
    for round in 0..streams {
        let mut s = TcpStream::connect(srv.mc.unwrap()).unwrap();
        s.set_nodelay(true).unwrap();
        let input = random_binary_stream(&mut rng);
        bytes_sent += input.len();
        let mut pos = 0;
        while pos < input.len() {
            let n = rng.gen_range(1..=(input.len() - pos).min(200));
            if s.write_all(&input[pos..pos + n]).is_err() {
                break; // the server closed (a malformed packet): allowed
            }
            pos += n;
        }
        let _ = s.shutdown(Shutdown::Write);
        let out = drain_to_eof(&mut s);
        assert!(
            binary_replies_well_formed(&out),
            "seed {seed_value} round {round}: reply bytes that are not whole response packets"
        );
        if round % 20 == 19 {
            check_alive(&srv, round);
        }
    }
    check_alive(&srv, streams);
    println!(
        "hostile binary: {streams} random streams, {bytes_sent} bytes, server alive, \
         no panic (seed {seed_value})"
    );
}

/// Whether the peer closes the connection (EOF or reset) within the
/// deadline, whatever it sends first.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn oversize_announcements_keep_memory_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = spawn(server_command(BIN, &tmp.path().join("data")));
    let pid = srv.child.id();
    // Warm up (threads, cache structures) before taking the baseline.
    let mut c = Client::connect(srv.seed).unwrap();
    c.set("warm", "up").unwrap();
    let base = vm_hwm_kib(pid);
    let chunk = vec![b'z'; 1 << 20];
    let mut streamed = 0usize;
    // A binary set announcing 1 GiB (the largest body it may announce).
    let binary_set = [
        binary_header(0x01, 3, 8, binary::MAX_BODY_BYTES),
        vec![0; 8],
        b"big".to_vec(),
    ]
    .concat();
    for (addr, header) in [
        (srv.seed, &b"set big 4000000000\r\n"[..]),
        (srv.mc.unwrap(), &b"set big 0 0 4000000000\r\n"[..]),
        // The largest length `ms` accepts (larger is a malformed line).
        (srv.mc.unwrap(), &b"ms big 2147483645 T0\r\n"[..]),
        (srv.mc.unwrap(), &binary_set[..]),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(header).unwrap();
        // 32 MiB of the announced block: skipped as it arrives, or the
        // connection is closed; either way never buffered.
        for _ in 0..32 {
            if s.write_all(&chunk).is_err() {
                break;
            }
            streamed += chunk.len();
        }
        drop(s);
    }
    // An endless command line (no terminator): closed at the cap.
    let mut s = TcpStream::connect(srv.seed).unwrap();
    let mut closed_line = false;
    for _ in 0..64 {
        if s.write_all(&chunk[..64 << 10]).is_err() {
            closed_line = true;
            break;
        }
    }
    if !closed_line {
        // Everything fit in socket buffers: the close shows on reading.
        closed_line = closed_by_peer(&mut s);
    }
    // An endless retrieval line: closed at its own, larger cap.
    let mut g = TcpStream::connect(srv.mc.unwrap()).unwrap();
    g.write_all(b"get").unwrap();
    let keys = b" k".repeat(32 << 10);
    let mut closed_get = false;
    for _ in 0..256 {
        if g.write_all(&keys).is_err() {
            closed_get = true;
            break;
        }
    }
    if !closed_get {
        closed_get = closed_by_peer(&mut g);
    }
    drop((s, g));
    check_alive(&srv, 0);
    let peak = vm_hwm_kib(pid);
    let growth = peak.saturating_sub(base);
    println!(
        "oversize: {} MiB of announced 2-4 GB (1 GiB binary) values streamed, endless line closed {closed_line}, \
         endless get closed {closed_get}; server VmHWM {base} KiB -> {peak} KiB (+{growth} KiB)",
        streamed >> 20
    );
    assert!(closed_line, "an endless command line was not closed");
    assert!(closed_get, "an endless retrieval line was not closed");
    assert!(
        growth < 24 << 10,
        "peak RSS grew by {growth} KiB under oversize announcements"
    );
}

#[test]
fn default_bind_is_loopback() {
    assert!(kvstore_net::ServerConfig::default().bind.is_loopback());
    // The binary without --bind: its listening lines name 127.0.0.1.
    let tmp = tempfile::tempdir().unwrap();
    let srv = spawn(server_command(BIN, &tmp.path().join("data")));
    assert!(srv.seed.ip().is_loopback(), "seed listener on {}", srv.seed);
    assert!(
        srv.mc.unwrap().ip().is_loopback(),
        "memcached listener on {:?}",
        srv.mc
    );
    // And it is not reachable on another local address of this machine.
    if let Some(other) = non_loopback_address() {
        let addr = std::net::SocketAddr::new(other, srv.seed.port());
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
            "server reachable on {addr}"
        );
    }
}

/// A non-loopback IPv4 address of this machine, if it has one (the local
/// address of a UDP socket "connected" to a public address; no packet is
/// sent).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Reads until `end` ends what was read.
fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(end) {
        s.read_exact(&mut b).unwrap();
        out.push(b[0]);
    }
    out
}

#[test]
fn hostile_streams_before_authentication_change_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("authfile");
    std::fs::write(&file, "hostile:9f2c7e1a-b04d\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = server_command(BIN, &tmp.path().join("data"));
    cmd.args([
        "--max-value-bytes",
        "4096",
        "--idle-timeout",
        "5",
        "--auth-file",
    ])
    .arg(&file);
    let srv = spawn(cmd);
    let mut admin = TcpStream::connect(srv.seed).unwrap();
    admin
        .write_all(b"auth hostile 9f2c7e1a-b04d\r\nset guard 4\r\nkeep\r\n")
        .unwrap();
    assert_eq!(
        read_until(&mut admin, b"STORED\r\n"),
        b"AUTHENTICATED\r\nSTORED\r\n"
    );

    let seed_value: u64 = rand::thread_rng().gen();
    let mut rng = StdRng::seed_from_u64(seed_value);
    let streams = 90;
    for round in 0..streams {
        // Seed, memcached text (and meta) and memcached binary in turn.
        let (addr, input) = match round % 3 {
            0 => (srv.seed, random_stream(&mut rng)),
            1 => (srv.mc.unwrap(), random_stream(&mut rng)),
            _ => (srv.mc.unwrap(), random_binary_stream(&mut rng)),
        };
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut pos = 0;
        while pos < input.len() {
            let n = rng.gen_range(1..=(input.len() - pos).min(64));
            if s.write_all(&input[pos..pos + n]).is_err() {
                break; // the server closed: allowed
            }
            pos += n;
        }
        let _ = s.shutdown(Shutdown::Write);
        let out = drain_to_eof(&mut s);
        let well_formed = match round % 3 {
            0 => seed_replies_well_formed(&out),
            1 => out.is_empty() || out.ends_with(b"\r\n"),
            _ => binary_replies_well_formed(&out),
        };
        assert!(
            well_formed,
            "seed {seed_value} round {round}: malformed reply {:?}",
            String::from_utf8_lossy(&out)
        );
        if round % 3 == 0 {
            // Nothing but refusals before `auth`.
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.lines()
                    .all(|l| l == "AUTH-REQUIRED" || l == "AUTH-FAILED"),
                "seed {seed_value} round {round}: {text}"
            );
        }
    }
    // The store holds the one key written after authenticating.
    admin.write_all(b"get guard\r\n").unwrap();
    assert_eq!(
        read_until(&mut admin, b"END\r\n"),
        b"VALUE guard 4\r\nkeep\r\nEND\r\n"
    );
    let mut mc = TcpStream::connect(srv.mc.unwrap()).unwrap();
    mc.write_all(b"set x 0 0 21\r\nhostile 9f2c7e1a-b04d\r\nstats\r\n")
        .unwrap();
    let stats = String::from_utf8(read_until(&mut mc, b"END\r\n")).unwrap();
    assert!(stats.starts_with("STORED\r\n"), "{stats}");
    assert!(
        stats.contains("STAT curr_items 1\r\n"),
        "seed {seed_value}: {stats}"
    );
    let log = srv.stderr.lock().unwrap();
    assert!(!log.contains("panicked"), "server panicked:\n{log}");
}

/// Feeds `input` in chunks cut at `cuts` to memcached's ASCII
/// authentication as a connection does (a credentials step counts as a
/// failed attempt: the stream stays unauthenticated); the steps taken.
/// While a step is incomplete, the bytes held stay under the bound: a line
/// of at most [`memcached::MAX_AUTH_LINE_BYTES`] (plus the last chunk) and
/// one data block of at most [`memcached::MAX_AUTH_DATA_BYTES`].
fn feed_auth(input: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut steps = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.push(input.len());
    ends.sort_unstable();
    let mut fed = 0;
    for end in ends {
        if end <= fed {
            continue;
        }
        let chunk = &input[fed..end];
        fed = end;
        buf.extend_from_slice(chunk);
        while !buf.is_empty() {
            let consumed = match memcached::parse_ascii_auth(&buf) {
                memcached::AuthStep::Incomplete => {
                    let line = buf.iter().position(|&b| b == b'\n');
                    let bound = match line {
                        None => memcached::MAX_AUTH_LINE_BYTES + chunk.len(),
                        Some(nl) => nl + 1 + memcached::MAX_AUTH_DATA_BYTES as usize + 2,
                    };
                    assert!(
                        buf.len() <= bound,
                        "{} bytes held (bound {bound})",
                        buf.len()
                    );
                    break;
                }
                memcached::AuthStep::Close => {
                    steps.push("close".to_string());
                    return steps;
                }
                memcached::AuthStep::Refuse { reply, consumed } => {
                    steps.push(String::from_utf8_lossy(reply).into_owned());
                    consumed
                }
                memcached::AuthStep::Credentials {
                    user,
                    password,
                    consumed,
                } => {
                    steps.push(format!("credentials {user:?} {password:?}"));
                    consumed
                }
            };
            assert!(consumed > 0 && consumed <= buf.len(), "no progress");
            buf.drain(..consumed);
        }
    }
    steps
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ascii_auth_chunked_arbitrary_bytes_parse_as_whole(
        input in prop_oneof![fragments(), meta_fragments(), proptest::collection::vec(any::<u8>(), 0..3000)],
        cuts in cuts(),
    ) {
        let whole = feed_auth(&input, &[]);
        prop_assert_eq!(feed_auth(&input, &cuts), whole);
    }
}
