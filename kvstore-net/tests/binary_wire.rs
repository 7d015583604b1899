//! memcached's binary protocol on the memcached port, over real TCP with
//! an in-process server: first-byte detection and `--memcached-protocol`,
//! every command, quiet semantics, opaque echo, cas on every store and
//! delete, error statuses, oversized values skipped as they arrive.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{config, raw, read_to_eof, start_with, TestServer};
use kvstore_net::protocol::binary::{
    Command, Header, Request, Status, StoreMode, HEADER_BYTES, NO_AUTO_CREATE, RESPONSE_MAGIC,
};
use kvstore_net::{MemcachedProtocol, ServerConfig};

/// A response as read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Resp {
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Resp {
    fn status(&self) -> Status {
        Status::from_code(self.status).unwrap()
    }
}

fn server(protocol: MemcachedProtocol, max_value_bytes: usize) -> (tempfile::TempDir, TestServer) {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_with(
        tmp.path(),
        ServerConfig {
            memcached_protocol: protocol,
            max_value_bytes,
            ..config()
        },
    );
    (tmp, srv)
}

fn auto() -> (tempfile::TempDir, TestServer) {
    server(MemcachedProtocol::Auto, 1 << 20)
}

fn send(s: &mut TcpStream, command: Command<'_>, opaque: u32, cas: u64) {
    let mut buf = Vec::new();
    Request {
        command,
        opaque,
        cas,
    }
    .encode(&mut buf);
    s.write_all(&buf).unwrap();
}

fn recv(s: &mut TcpStream) -> Resp {
    let mut head = [0u8; HEADER_BYTES];
    s.read_exact(&mut head).unwrap();
    let h = Header::decode(&head);
    assert_eq!(h.magic, RESPONSE_MAGIC, "{head:02x?}");
    assert_eq!(h.data_type, 0);
    let mut body = vec![0u8; h.body_len as usize];
    s.read_exact(&mut body).unwrap();
    let key_start = usize::from(h.extras_len);
    let value_start = key_start + usize::from(h.key_len);
    Resp {
        opcode: h.opcode,
        status: h.status,
        opaque: h.opaque,
        cas: h.cas,
        extras: body[..key_start].to_vec(),
        key: body[key_start..value_start].to_vec(),
        value: body[value_start..].to_vec(),
    }
}

/// Sends one request and reads one response.
fn call(s: &mut TcpStream, command: Command<'_>, cas: u64) -> Resp {
    let opcode = command.opcode().byte();
    send(s, command, 0x1234_5678, cas);
    let r = recv(s);
    assert_eq!((r.opcode, r.opaque), (opcode, 0x1234_5678), "{r:?}");
    r
}

fn get(key: &[u8]) -> Command<'_> {
    Command::Get {
        key,
        with_key: false,
        quiet: false,
    }
}

fn set<'a>(key: &'a [u8], value: &'a [u8], flags: u32) -> Command<'a> {
    Command::Store {
        mode: StoreMode::Set,
        key,
        flags,
        exptime: 0,
        value,
        quiet: false,
    }
}

fn noop_ends(s: &mut TcpStream) {
    send(s, Command::Noop, 0xffff, 0);
    let r = recv(s);
    assert_eq!((r.opcode, r.opaque, r.status), (0x0a, 0xffff, 0), "{r:?}");
}

#[test]
fn the_first_byte_picks_the_protocol_of_each_connection() {
    let (_tmp, srv) = auto();
    let mut b = raw(srv.mc);
    let r = call(&mut b, set(b"k", b"val", 7), 0);
    assert_eq!(r.status(), Status::Success);
    assert_ne!(r.cas, 0);
    // A text connection on the same port reads what the binary one wrote.
    let mut t = raw(srv.mc);
    common::round_trip(&mut t, b"get k\r\n", b"VALUE k 7 3\r\nval\r\nEND\r\n");
    common::round_trip(&mut t, b"set k 1 0 2\r\nhi\r\n", b"STORED\r\n");
    let r = call(&mut b, get(b"k"), 0);
    assert_eq!((r.extras, r.value), (vec![0, 0, 0, 1], b"hi".to_vec()));
    // The exact bytes of a get hit, as memcached sends them.
    let mut raw_get = Vec::new();
    Request {
        command: get(b"k"),
        opaque: 0xdead_beef,
        cas: 0,
    }
    .encode(&mut raw_get);
    b.write_all(&raw_get).unwrap();
    let cas = r.cas.to_be_bytes();
    let mut expected = vec![
        0x81, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0xde, 0xad, 0xbe,
        0xef,
    ];
    expected.extend_from_slice(&cas);
    expected.extend_from_slice(&[0, 0, 0, 1, b'h', b'i']);
    common::expect(&mut b, &expected);
}

#[test]
fn ascii_only_reads_binary_bytes_as_text() {
    let (_tmp, srv) = server(MemcachedProtocol::Ascii, 1 << 20);
    let mut s = raw(srv.mc);
    let mut packet = Vec::new();
    Request {
        command: get(b"k"),
        opaque: 1,
        cas: 0,
    }
    .encode(&mut packet);
    packet.extend_from_slice(b"\r\n");
    common::round_trip(&mut s, &packet, b"ERROR\r\n");
    common::round_trip(&mut s, b"version\r\n", b"VERSION 1.6.18\r\n");
}

#[test]
fn binary_only_closes_a_text_connection_at_once() {
    let (_tmp, srv) = server(MemcachedProtocol::Binary, 1 << 20);
    let mut s = raw(srv.mc);
    s.write_all(b"version\r\n").unwrap();
    assert_eq!(read_to_eof(&mut s), b"");
    let mut b = raw(srv.mc);
    let r = call(&mut b, Command::Version, 0);
    assert_eq!((r.status(), r.value), (Status::Success, b"1.6.18".to_vec()));
}

#[test]
fn quiet_commands_answer_only_errors_and_get_hits() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let quiet_set = |key, value| Command::Store {
        mode: StoreMode::Set,
        key,
        flags: 3,
        exptime: 0,
        value,
        quiet: true,
    };
    // One write: the whole pipeline, ended by a noop.
    let mut buf = Vec::new();
    let mut push = |command, opaque| {
        Request {
            command,
            opaque,
            cas: 0,
        }
        .encode(&mut buf)
    };
    push(quiet_set(b"a", b"1"), 1);
    push(quiet_set(b"b", b"2"), 2);
    push(
        Command::Get {
            key: b"missing",
            with_key: false,
            quiet: true,
        },
        3,
    );
    push(
        Command::Get {
            key: b"a",
            with_key: true,
            quiet: true,
        },
        4,
    );
    push(
        Command::Store {
            mode: StoreMode::Add,
            key: b"b",
            flags: 0,
            exptime: 0,
            value: b"x",
            quiet: true,
        },
        5,
    );
    push(
        Command::Delete {
            key: b"missing",
            quiet: true,
        },
        6,
    );
    push(
        Command::Counter {
            incr: true,
            key: b"b",
            delta: 40,
            initial: 0,
            exptime: 0,
            quiet: true,
        },
        7,
    );
    push(
        Command::Get {
            key: b"b",
            with_key: false,
            quiet: true,
        },
        8,
    );
    push(Command::Noop, 9);
    s.write_all(&buf).unwrap();
    let hit = recv(&mut s);
    assert_eq!(
        (
            hit.opcode,
            hit.opaque,
            hit.status,
            &hit.key[..],
            &hit.value[..]
        ),
        (0x0d, 4, 0, &b"a"[..], &b"1"[..])
    );
    assert_eq!(hit.extras, [0, 0, 0, 3]);
    let exists = recv(&mut s);
    assert_eq!((exists.opcode, exists.opaque), (0x12, 5));
    assert_eq!(exists.status(), Status::KeyExists);
    assert_eq!(exists.value, b"Data exists for key.");
    let missing = recv(&mut s);
    assert_eq!((missing.opcode, missing.opaque), (0x14, 6));
    assert_eq!(missing.status(), Status::KeyNotFound);
    assert_eq!(missing.value, b"Not found");
    let counter = recv(&mut s);
    assert_eq!(
        (counter.opcode, counter.opaque, counter.status),
        (0x09, 8, 0)
    );
    assert_eq!(counter.value, b"42");
    let noop = recv(&mut s);
    assert_eq!((noop.opcode, noop.opaque, noop.status), (0x0a, 9, 0));
}

#[test]
fn misses_and_errors_carry_memcacheds_statuses() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let r = call(&mut s, get(b"nokey"), 0);
    assert_eq!((r.status(), r.cas), (Status::KeyNotFound, 0));
    assert_eq!((r.extras.len(), r.key.len()), (0, 0));
    assert_eq!(r.value, b"Not found");
    // A getk miss carries the key and no message.
    let r = call(
        &mut s,
        Command::Get {
            key: b"nokey",
            with_key: true,
            quiet: false,
        },
        0,
    );
    assert_eq!(r.status(), Status::KeyNotFound);
    assert_eq!((r.key, r.value), (b"nokey".to_vec(), vec![]));
    let add = |key| Command::Store {
        mode: StoreMode::Add,
        key,
        flags: 0,
        exptime: 0,
        value: b"v",
        quiet: false,
    };
    assert_eq!(call(&mut s, add(b"k"), 0).status(), Status::Success);
    assert_eq!(call(&mut s, add(b"k"), 0).status(), Status::KeyExists);
    let replace = Command::Store {
        mode: StoreMode::Replace,
        key: b"none",
        flags: 0,
        exptime: 0,
        value: b"v",
        quiet: false,
    };
    assert_eq!(call(&mut s, replace, 0).status(), Status::KeyNotFound);
    let append = Command::Concat {
        append: true,
        key: b"none",
        value: b"v",
        quiet: false,
    };
    let r = call(&mut s, append, 0);
    assert_eq!(
        (r.status(), r.value),
        (Status::NotStored, b"Not stored.".to_vec())
    );
    let r = call(
        &mut s,
        Command::Counter {
            incr: true,
            key: b"k",
            delta: 1,
            initial: 0,
            exptime: 0,
            quiet: false,
        },
        0,
    );
    assert_eq!(r.status(), Status::DeltaBadValue);
    assert_eq!(r.value, b"Non-numeric server-side value for incr or decr");
    // Every response so far kept the connection open.
    noop_ends(&mut s);
}

#[test]
fn cas_guards_every_store_delete_and_counter() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let c1 = call(&mut s, set(b"k", b"1", 0), 0).cas;
    assert_eq!(call(&mut s, get(b"k"), 0).cas, c1);
    let stale = c1 + 1000;
    assert_eq!(
        call(&mut s, set(b"k", b"2", 0), stale).status(),
        Status::KeyExists
    );
    let c2 = call(&mut s, set(b"k", b"2", 0), c1).cas;
    assert_ne!(c2, c1);
    assert_eq!(
        call(&mut s, set(b"none", b"2", 0), c1).status(),
        Status::KeyNotFound
    );
    let append = |value| Command::Concat {
        append: true,
        key: b"k",
        value,
        quiet: false,
    };
    assert_eq!(call(&mut s, append(b"x"), c1).status(), Status::KeyExists);
    let c3 = call(&mut s, append(b"0"), c2).cas;
    assert_ne!(c3, c2);
    let incr = Command::Counter {
        incr: true,
        key: b"k",
        delta: 1,
        initial: 0,
        exptime: 0,
        quiet: false,
    };
    assert_eq!(call(&mut s, incr.clone(), c2).status(), Status::KeyExists);
    let r = call(&mut s, incr, c3);
    assert_eq!(
        (r.status(), r.value),
        (Status::Success, 21u64.to_be_bytes().to_vec())
    );
    let c4 = r.cas;
    assert_eq!(call(&mut s, get(b"k"), 0).cas, c4);
    let delete = Command::Delete {
        key: b"k",
        quiet: false,
    };
    assert_eq!(call(&mut s, delete.clone(), c3).status(), Status::KeyExists);
    assert_eq!(call(&mut s, delete.clone(), c4).status(), Status::Success);
    assert_eq!(call(&mut s, delete, 0).status(), Status::KeyNotFound);
    // An add with a cas is a compare-and-swap, as in memcached.
    let c5 = call(&mut s, set(b"a", b"1", 0), 0).cas;
    let add_cas = Command::Store {
        mode: StoreMode::Add,
        key: b"a",
        flags: 0,
        exptime: 0,
        value: b"2",
        quiet: false,
    };
    assert_eq!(call(&mut s, add_cas, c5).status(), Status::Success);
    assert_eq!(call(&mut s, get(b"a"), 0).value, b"2");
}

#[test]
fn counters_create_missing_keys_unless_told_not_to() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let counter = |incr, delta, exptime| Command::Counter {
        incr,
        key: b"n",
        delta,
        initial: 10,
        exptime,
        quiet: false,
    };
    let r = call(&mut s, counter(true, 5, NO_AUTO_CREATE), 0);
    assert_eq!(r.status(), Status::KeyNotFound);
    let r = call(&mut s, counter(true, 5, 0), 0);
    assert_eq!(r.value, 10u64.to_be_bytes());
    assert_ne!(r.cas, 0);
    let r = call(&mut s, counter(true, 5, 0), 0);
    assert_eq!(r.value, 15u64.to_be_bytes());
    let r = call(&mut s, counter(false, 100, 0), 0);
    assert_eq!(r.value, 0u64.to_be_bytes());
    assert_eq!(call(&mut s, get(b"n"), 0).value, b"0");
    call(&mut s, set(b"n", b"18446744073709551615", 0), 0);
    let r = call(&mut s, counter(true, 2, 0), 0);
    assert_eq!(r.value, 1u64.to_be_bytes(), "incr wraps at 2^64");
}

#[test]
fn touch_and_gat_answer_flags_and_cas() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let cas = call(&mut s, set(b"k", b"value", 7), 0).cas;
    let r = call(
        &mut s,
        Command::Touch {
            key: b"k",
            exptime: 100,
        },
        0,
    );
    assert_eq!(r.status(), Status::Success);
    assert_eq!((r.cas, r.extras, r.value), (cas, vec![0, 0, 0, 7], vec![]));
    let r = call(
        &mut s,
        Command::Touch {
            key: b"none",
            exptime: 100,
        },
        0,
    );
    assert_eq!(r.status(), Status::KeyNotFound);
    let r = call(
        &mut s,
        Command::GetAndTouch {
            key: b"k",
            exptime: 100,
            with_key: true,
            quiet: false,
        },
        0,
    );
    assert_eq!((r.key, r.value), (b"k".to_vec(), b"value".to_vec()));
    assert_eq!(r.extras, [0, 0, 0, 7]);
    // A gat to the past expires the item (an absolute time long gone).
    let r = call(
        &mut s,
        Command::GetAndTouch {
            key: b"k",
            exptime: 30 * 24 * 3600 + 1,
            with_key: false,
            quiet: false,
        },
        0,
    );
    assert_eq!(r.status(), Status::Success);
    assert_eq!(call(&mut s, get(b"k"), 0).status(), Status::KeyNotFound);
    // A quiet gat says nothing on a miss.
    send(
        &mut s,
        Command::GetAndTouch {
            key: b"k",
            exptime: 0,
            with_key: false,
            quiet: true,
        },
        5,
        0,
    );
    noop_ends(&mut s);
}

#[test]
fn oversized_values_are_refused_skipped_and_drop_the_old_value() {
    let (_tmp, srv) = server(MemcachedProtocol::Auto, 64);
    let mut s = raw(srv.mc);
    call(&mut s, set(b"k", b"old", 0), 0);
    call(&mut s, set(b"j", b"old", 0), 0);
    let big = vec![b'x'; 100_000];
    for (key, quiet) in [(&b"k"[..], false), (b"j", true)] {
        let mut packet = Vec::new();
        Request {
            command: Command::Store {
                mode: StoreMode::Set,
                key,
                flags: 0,
                exptime: 0,
                value: &big,
                quiet,
            },
            opaque: 77,
            cas: 0,
        }
        .encode(&mut packet);
        // The refusal comes once the key is in, before the value is sent:
        // the value is skipped as it arrives, never buffered.
        s.write_all(&packet[..HEADER_BYTES + 8 + 1]).unwrap();
        let r = recv(&mut s);
        assert_eq!((r.opaque, r.status()), (77, Status::TooLarge));
        assert_eq!(r.value, b"Too large.");
        s.write_all(&packet[HEADER_BYTES + 8 + 1..]).unwrap();
        // memcached removes the value the set meant to replace.
        assert_eq!(call(&mut s, get(key), 0).status(), Status::KeyNotFound);
    }
    // An append too large keeps the old value.
    call(&mut s, set(b"k", b"old", 0), 0);
    let r = call(
        &mut s,
        Command::Concat {
            append: true,
            key: b"k",
            value: &big,
            quiet: false,
        },
        0,
    );
    assert_eq!(r.status(), Status::TooLarge);
    assert_eq!(call(&mut s, get(b"k"), 0).value, b"old");
    let mut t = raw(srv.mc);
    t.write_all(b"stats\r\n").unwrap();
    let mut stats = Vec::new();
    while !stats.ends_with(b"END\r\n") {
        let mut b = [0u8; 4096];
        let n = t.read(&mut b).unwrap();
        assert!(n > 0);
        stats.extend_from_slice(&b[..n]);
    }
    let stats = String::from_utf8(stats).unwrap();
    assert!(stats.contains("STAT store_too_large 3\r\n"), "{stats}");
}

#[test]
fn unknown_opcodes_are_skipped_and_malformed_packets_close() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    // Unknown opcode with a body: Unknown command, the body skipped.
    let mut packet = Vec::new();
    Header {
        magic: 0x80,
        opcode: 0x50,
        key_len: 2,
        extras_len: 2,
        body_len: 8,
        opaque: 3,
        ..Header::default()
    }
    .encode(&mut packet);
    packet.extend_from_slice(b"eekkvvvv");
    s.write_all(&packet).unwrap();
    let r = recv(&mut s);
    assert_eq!(
        (r.opcode, r.opaque, r.status()),
        (0x50, 3, Status::UnknownCommand)
    );
    assert_eq!(r.value, b"Unknown command");
    noop_ends(&mut s);
    // SASL, as memcached started without it answers.
    for command in [
        Command::SaslListMechs,
        Command::SaslAuth {
            step: false,
            mechanism: b"PLAIN",
            data: b"\0user\0pass",
        },
    ] {
        assert_eq!(call(&mut s, command, 0).status(), Status::UnknownCommand);
    }
    noop_ends(&mut s);
    // A get with extras: Invalid arguments, then the connection closes.
    let mut packet = Vec::new();
    Header {
        magic: 0x80,
        opcode: 0x00,
        key_len: 1,
        extras_len: 4,
        body_len: 5,
        opaque: 9,
        ..Header::default()
    }
    .encode(&mut packet);
    packet.extend_from_slice(b"xxxxk");
    s.write_all(&packet).unwrap();
    let r = recv(&mut s);
    assert_eq!((r.opaque, r.status()), (9, Status::InvalidArguments));
    assert_eq!(r.value, b"Invalid arguments");
    assert_eq!(read_to_eof(&mut s), b"");
    // A packet that does not start with the magic closes without a word.
    let mut s = raw(srv.mc);
    noop_ends(&mut s);
    s.write_all(&[0x81; 24]).unwrap();
    assert_eq!(read_to_eof(&mut s), b"");
}

#[test]
fn version_stat_flush_and_quit() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let r = call(&mut s, Command::Version, 0);
    assert_eq!(r.value, b"1.6.18");
    call(&mut s, set(b"k", b"v", 0), 0);
    call(&mut s, get(b"k"), 0);
    send(&mut s, Command::Stat { group: b"" }, 42, 0);
    let mut stats = std::collections::HashMap::new();
    loop {
        let r = recv(&mut s);
        assert_eq!((r.opcode, r.opaque, r.status, r.cas), (0x10, 42, 0, 0));
        if r.key.is_empty() {
            assert!(r.value.is_empty());
            break;
        }
        stats.insert(
            String::from_utf8(r.key).unwrap(),
            String::from_utf8(r.value).unwrap(),
        );
    }
    assert_eq!(stats["get_hits"], "1");
    assert_eq!(stats["cmd_set"], "1");
    assert_eq!(stats["curr_items"], "1");
    let r = call(&mut s, Command::Stat { group: b"bogus" }, 0);
    assert_eq!(r.status(), Status::KeyNotFound);
    // A group: its lines, then the terminator.
    send(&mut s, Command::Stat { group: b"settings" }, 43, 0);
    let mut names = Vec::new();
    loop {
        let r = recv(&mut s);
        assert_eq!((r.opcode, r.opaque, r.status), (0x10, 43, 0));
        if r.key.is_empty() {
            break;
        }
        names.push(String::from_utf8(r.key).unwrap());
    }
    assert!(names.iter().any(|n| n == "maxconns"), "{names:?}");
    // reset answers the terminator alone, and zeroes the counters.
    let r = call(&mut s, Command::Stat { group: b"reset" }, 0);
    assert_eq!((r.status, r.key.len(), r.value.len()), (0, 0, 0));
    send(&mut s, Command::Stat { group: b"" }, 44, 0);
    let mut get_hits = None;
    loop {
        let r = recv(&mut s);
        if r.key.is_empty() {
            break;
        }
        if r.key == b"get_hits" {
            get_hits = Some(r.value);
        }
    }
    assert_eq!(get_hits.as_deref(), Some(&b"0"[..]));
    // detail on, then the dump as one `detailed` statistic.
    let r = call(
        &mut s,
        Command::Stat {
            group: b"detail on",
        },
        0,
    );
    assert_eq!((r.status, r.key.len(), r.value.len()), (0, 0, 0));
    call(&mut s, set(b"p:1", b"v", 0), 0);
    call(&mut s, get(b"p:1"), 0);
    send(
        &mut s,
        Command::Stat {
            group: b"detail dump",
        },
        45,
        0,
    );
    let dump = recv(&mut s);
    assert_eq!(
        (dump.opaque, dump.status, &dump.key[..]),
        (45, 0, &b"detailed"[..])
    );
    let text = String::from_utf8(dump.value).unwrap();
    assert!(
        text.starts_with("PREFIX p ") && text.ends_with("\r\nEND\r\n"),
        "{text:?}"
    );
    let end = recv(&mut s);
    assert_eq!((end.opaque, end.key.len(), end.value.len()), (45, 0, 0));
    let flush = |delay, quiet| Command::Flush { delay, quiet };
    send(&mut s, flush(None, true), 1, 0);
    noop_ends(&mut s);
    assert_eq!(call(&mut s, get(b"k"), 0).status(), Status::KeyNotFound);
    call(&mut s, set(b"k", b"v", 0), 0);
    assert_eq!(
        call(&mut s, flush(Some(0), false), 0).status(),
        Status::Success
    );
    assert_eq!(call(&mut s, get(b"k"), 0).status(), Status::KeyNotFound);
    let r = call(&mut s, Command::Quit { quiet: false }, 0);
    assert_eq!((r.status(), r.value), (Status::Success, vec![]));
    assert_eq!(read_to_eof(&mut s), b"");
    let mut s = raw(srv.mc);
    send(&mut s, Command::Quit { quiet: true }, 0, 0);
    assert_eq!(read_to_eof(&mut s), b"");
}

#[test]
fn chunked_pipelines_get_every_reply_in_order() {
    let (_tmp, srv) = auto();
    let mut s = raw(srv.mc);
    let mut buf = Vec::new();
    let values: Vec<Vec<u8>> = (0..200u32)
        .map(|i| format!("value-{i}").repeat(i as usize % 7 + 1).into_bytes())
        .collect();
    let keys: Vec<Vec<u8>> = (0..200u32)
        .map(|i| format!("key{i}").into_bytes())
        .collect();
    for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
        Request {
            command: set(key, value, i as u32),
            opaque: i as u32,
            cas: 0,
        }
        .encode(&mut buf);
        Request {
            command: get(key),
            opaque: 1000 + i as u32,
            cas: 0,
        }
        .encode(&mut buf);
    }
    // Odd-sized writes split headers and bodies everywhere.
    for chunk in buf.chunks(37) {
        s.write_all(chunk).unwrap();
    }
    for (i, value) in values.iter().enumerate() {
        let stored = recv(&mut s);
        assert_eq!(
            (stored.opcode, stored.opaque, stored.status),
            (0x01, i as u32, 0)
        );
        let got = recv(&mut s);
        assert_eq!((got.opaque, &got.value), (1000 + i as u32, value));
        assert_eq!(got.extras, (i as u32).to_be_bytes());
        assert_eq!(got.cas, stored.cas);
    }
}
