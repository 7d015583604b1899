//! `--durability always` over the wire: a reply goes out only once the
//! journal entries behind it are durable, whichever thread writes it (the
//! connection's, or the store's syncer right after its flush), pipelined
//! requests share a flush, and a client that half-closes still gets its
//! replies. The journal's `fdatasync` is held at a gate to see it.

use crate::common;
use crate::hooked;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::{raw, read_to_eof, round_trip};
use hooked::{HookedFs, JournalGate};
use kvstore_core::{Durability, Options, Store};
use kvstore_net::{Server, ServerHandle};

struct Gated {
    gate: Arc<HookedFs<JournalGate>>,
    handle: ServerHandle,
    _dir: tempfile::TempDir,
}

fn start_gated() -> Gated {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(HookedFs::new(JournalGate::default()));
    let store = Store::open_with(
        dir.path(),
        Options::new()
            .durability(Durability::Always)
            .file_system(gate.clone()),
    )
    .unwrap();
    let handle = Server::start(Arc::new(store), common::config()).unwrap();
    Gated {
        gate,
        handle,
        _dir: dir,
    }
}

/// Asserts that nothing arrives on `s` for a while (the gate is closed,
/// so nothing may).
fn assert_silent(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a reply before the journal flush: {other:?} {byte:?}"),
    }
    s.set_read_timeout(Some(common::DEADLINE)).unwrap();
}

#[test]
fn replies_wait_for_the_journal_flush() {
    let g = start_gated();
    let addr = g.handle.memcached_addr().unwrap();
    let mut writer = raw(addr);
    round_trip(&mut writer, b"set k 0 0 3\r\nold\r\n", b"STORED\r\n");

    let closed = JournalGate::close(&g.gate.0);
    writer.write_all(b"set k 0 0 3\r\nnew\r\n").unwrap();
    assert_silent(&mut writer);
    // Another client reading the key is not told of the new value before
    // it is durable either.
    let mut reader = raw(addr);
    reader.write_all(b"get k\r\n").unwrap();
    assert_silent(&mut reader);

    drop(closed);
    common::expect(&mut writer, b"STORED\r\n");
    common::expect(&mut reader, b"VALUE k 0 3\r\nnew\r\nEND\r\n");
    g.handle.shutdown().unwrap();
}

#[test]
fn a_pipeline_of_sets_shares_a_flush() {
    let g = start_gated();
    let mut s = raw(g.handle.memcached_addr().unwrap());
    round_trip(&mut s, b"version\r\n", b"VERSION ");
    common::line(&mut s);
    let closed = JournalGate::close(&g.gate.0);
    let before = g.gate.0.flushes();
    let mut pipeline = Vec::new();
    for i in 0..50 {
        pipeline.extend_from_slice(format!("set k{i} 0 0 1\r\nv\r\n").as_bytes());
    }
    s.write_all(&pipeline).unwrap();
    assert_silent(&mut s);
    drop(closed);
    common::expect(&mut s, &b"STORED\r\n".repeat(50));
    let flushes = g.gate.0.flushes() - before;
    // One per batch the server read, at most a few; 50 if each set waited.
    assert!((1..10).contains(&flushes), "{flushes} flushes for 50 sets");
    g.handle.shutdown().unwrap();
}

#[test]
fn a_client_that_half_closes_gets_its_replies() {
    let g = start_gated();
    let mut s = raw(g.handle.memcached_addr().unwrap());
    let closed = JournalGate::close(&g.gate.0);
    s.write_all(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\nget a b\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_silent(&mut s);
    drop(closed);
    let got = read_to_eof(&mut s);
    assert_eq!(
        got,
        b"STORED\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n"
    );
    g.handle.shutdown().unwrap();
}
