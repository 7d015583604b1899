//! The seed dialect, byte for byte, against the in-process server: every
//! row of docs/PROTOCOL.md's table, the example session, bad input that keeps
//! the connection usable, pipelining, and the seed `Client`.

use crate::common;

use std::io::Write;

use common::{expect, line, raw, read_to_eof, round_trip, start};
use kvstore_net::{Client, Error};

#[test]
fn example_session_exact_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.seed);
    round_trip(&mut s, b"set greeting 5\r\nhello\r\n", b"STORED\r\n");
    round_trip(
        &mut s,
        b"get greeting\r\n",
        b"VALUE greeting 5\r\nhello\r\nEND\r\n",
    );
    round_trip(
        &mut s,
        b"get nothing\r\n",
        b"VALUE nothing 0\r\n\r\nEND\r\n",
    );
    round_trip(&mut s, b"fetch x\r\n", b"INVALID REQUEST\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn every_seed_row() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.seed);
    // set, with a block holding \r\n and arbitrary bytes
    round_trip(&mut s, b"set a 4\r\n\r\n\x00\xff\r\n", b"STORED\r\n");
    round_trip(&mut s, b"set b 1\r\nB\r\n", b"STORED\r\n");
    round_trip(&mut s, b"set empty 0\r\n\r\n", b"STORED\r\n");
    // get one, get many (missing keys as empty blocks, in order)
    round_trip(
        &mut s,
        b"get a\r\n",
        b"VALUE a 4\r\n\r\n\x00\xff\r\nEND\r\n",
    );
    round_trip(
        &mut s,
        b"get b nope a b\r\n",
        b"VALUE b 1\r\nB\r\nVALUE nope 0\r\n\r\nVALUE a 4\r\n\r\n\x00\xff\r\nVALUE b 1\r\nB\r\nEND\r\n",
    );
    // delete <key>: DELETED, then NOT-FOUND
    round_trip(&mut s, b"delete b\r\n", b"DELETED\r\n");
    round_trip(&mut s, b"delete b\r\n", b"NOT-FOUND\r\n");
    round_trip(&mut s, b"get b\r\n", b"VALUE b 0\r\n\r\nEND\r\n");
    // overwrite
    round_trip(&mut s, b"set a 3\r\nnew\r\n", b"STORED\r\n");
    round_trip(&mut s, b"get a\r\n", b"VALUE a 3\r\nnew\r\nEND\r\n");
    // delete without a key removes everything
    round_trip(&mut s, b"delete\r\n", b"DELETED\r\n");
    round_trip(
        &mut s,
        b"get a empty\r\n",
        b"VALUE a 0\r\n\r\nVALUE empty 0\r\n\r\nEND\r\n",
    );
    // a bare \n and extra spaces are accepted
    round_trip(&mut s, b"set  c  2 \nhi\r\n", b"STORED\r\n");
    round_trip(&mut s, b"get c\n", b"VALUE c 2\r\nhi\r\nEND\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn invalid_requests_keep_the_connection_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.seed);
    round_trip(&mut s, b"set keep 4\r\nkeep\r\n", b"STORED\r\n");
    let long_key = [b"get ".as_slice(), &[b'k'; 251], b"\r\n"].concat();
    let cases: Vec<&[u8]> = vec![
        b"fetch x\r\n",
        b"\r\n",
        b"SET k 1\r\n",
        b"set k\r\n",
        b"set k 1 2\r\n",
        b"set k x\r\n",
        b"set k -1\r\n",
        b"set k 99999999999999999999999\r\n",
        b"get\r\n",
        b"delete a b\r\n",
        b"get bad\x01key\r\n",
        b"get \xff\x7f\r\n",
        &long_key,
        // a bad key in a set skips its announced block too
        b"set bad\x02key 5\r\nhello\r\n",
        // a block longer than announced: one error, resynchronized at the
        // end of the line
        b"set k 3\r\nhello\r\n",
    ];
    for case in cases {
        round_trip(&mut s, case, b"INVALID REQUEST\r\n");
        // The next request works, and the other key is untouched.
        round_trip(&mut s, b"get keep\r\n", b"VALUE keep 4\r\nkeep\r\nEND\r\n");
    }
    round_trip(&mut s, b"get k\r\n", b"VALUE k 0\r\n\r\nEND\r\n");
    // Keys are bytes: non-UTF-8 keys work.
    round_trip(&mut s, b"set \xc3\x28\xff 1\r\nx\r\n", b"STORED\r\n");
    round_trip(
        &mut s,
        b"get \xc3\x28\xff\r\n",
        b"VALUE \xc3\x28\xff 1\r\nx\r\nEND\r\n",
    );
    // A key of exactly 250 bytes is fine.
    let key = vec![b'k'; 250];
    let mut req = b"set ".to_vec();
    req.extend_from_slice(&key);
    req.extend_from_slice(b" 1\r\nv\r\n");
    round_trip(&mut s, &req, b"STORED\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn pipelined_requests_are_answered_in_order_with_one_write() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.seed);
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..50 {
        batch.extend_from_slice(format!("set k{i} 2\r\n{:02}\r\nget k{i}\r\n", i).as_bytes());
        expected
            .extend_from_slice(format!("STORED\r\nVALUE k{i} 2\r\n{:02}\r\nEND\r\n", i).as_bytes());
    }
    batch.extend_from_slice(b"bogus\r\ndelete k0\r\n");
    expected.extend_from_slice(b"INVALID REQUEST\r\nDELETED\r\n");
    s.write_all(&batch).unwrap();
    expect(&mut s, &expected);

    // Count the server's read and write calls around a pipelined batch of
    // 100 requests sent in one write (stats come from the memcached
    // listener). However loopback splits the batch, the server writes once
    // per read that completed requests, never once per request.
    let mut mc = raw(srv.mc);
    let io_calls = |mc: &mut std::net::TcpStream| -> (u64, u64) {
        mc.write_all(b"stats\r\n").unwrap();
        let (mut reads, mut writes) = (None, None);
        loop {
            let l = line(mc);
            if l == "END\r\n" {
                return (reads.unwrap(), writes.unwrap());
            }
            if let Some(v) = l.strip_prefix("STAT read_calls ") {
                reads = Some(v.trim().parse().unwrap());
            }
            if let Some(v) = l.strip_prefix("STAT write_calls ") {
                writes = Some(v.trim().parse().unwrap());
            }
        }
    };
    let (reads_before, writes_before) = io_calls(&mut mc);
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend_from_slice(format!("get k{}\r\n", i % 50).as_bytes());
    }
    s.write_all(&batch).unwrap();
    let mut replies = 0;
    while replies < 100 {
        if line(&mut s) == "END\r\n" {
            replies += 1;
        }
    }
    // The counters are published after the batch's write, so the replies
    // can arrive first: ask again until the batch shows. Each ask is one
    // read and one write of the memcached connection (a 7-byte request
    // arrives whole), counted before its next request is read: the k-th
    // ask after the first sees k of each.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let mut asked = 0;
    let (batch_reads, batch_writes) = loop {
        let (reads, writes) = io_calls(&mut mc);
        asked += 1;
        let batch = (reads - reads_before - asked, writes - writes_before - asked);
        if batch.1 > 0 {
            break batch;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch's write was never counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert!(
        batch_writes <= batch_reads && batch_reads < 100,
        "{batch_writes} writes and {batch_reads} reads for 100 pipelined requests"
    );
    srv.handle.shutdown().unwrap();
}

#[test]
fn client_library_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = Client::connect(srv.seed).unwrap();
    c.set("a", "1").unwrap();
    c.set(b"bin\xff", [0u8, 13, 10, 255]).unwrap();
    assert_eq!(c.get("a").unwrap(), b"1");
    assert_eq!(c.get(b"bin\xff").unwrap(), [0u8, 13, 10, 255]);
    assert_eq!(c.get("missing").unwrap(), b"");
    assert_eq!(
        c.get_many(&["a", "missing", "a"]).unwrap(),
        vec![b"1".to_vec(), vec![], b"1".to_vec()]
    );
    assert!(c.get_many::<&str>(&[]).unwrap().is_empty());
    assert!(c.delete("a").unwrap());
    assert!(!c.delete("a").unwrap());
    c.set("b", "2").unwrap();
    c.clear().unwrap();
    assert_eq!(c.get("b").unwrap(), b"");
    // Keys the protocol cannot carry are refused before sending.
    assert!(matches!(c.set("a b", "x"), Err(Error::InvalidRequest(_))));
    assert!(matches!(c.get(""), Err(Error::InvalidRequest(_))));
    assert!(matches!(
        c.get("x".repeat(251)),
        Err(Error::InvalidRequest(_))
    ));
    // The connection is still fine.
    c.set("c", "3").unwrap();
    assert_eq!(c.get("c").unwrap(), b"3");
    drop(c);
    srv.handle.shutdown().unwrap();
}

#[test]
fn value_over_the_limit_is_not_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::config();
    cfg.max_value_bytes = 10;
    let srv = common::start_with(tmp.path(), cfg);
    let mut c = Client::connect(srv.seed).unwrap();
    c.set("k", "0123456789").unwrap();
    assert!(matches!(c.set("k", "0123456789a"), Err(Error::NotStored)));
    assert_eq!(c.get("k").unwrap(), b"0123456789");
    drop(c);
    srv.handle.shutdown().unwrap();
}

#[test]
fn connecting_to_nothing_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    assert!(matches!(Client::connect(addr), Err(Error::Connect { .. })));
}

#[test]
fn server_closes_quit_like_http() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.seed);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_to_eof(&mut s), b"");
    srv.handle.shutdown().unwrap();
}

#[test]
fn in_process_restart_finds_every_value() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = Client::connect(srv.seed).unwrap();
    let mut m = kvstore_net::McClient::connect(srv.mc).unwrap();
    for i in 0..50 {
        c.set(format!("k{i}"), format!("v{i}")).unwrap();
    }
    m.set("flagged", "x", 99, 0).unwrap();
    let cas = m.gets("flagged").unwrap().unwrap().cas;
    drop((c, m));
    srv.handle.shutdown().unwrap();
    drop(srv.store);

    let srv = start(tmp.path());
    let mut c = Client::connect(srv.seed).unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    let values = c.get_many(&keys).unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(v, format!("v{i}").as_bytes());
    }
    let mut m = kvstore_net::McClient::connect(srv.mc).unwrap();
    let item = m.gets("flagged").unwrap().unwrap();
    assert_eq!((item.flags, item.cas), (99, cas));
    drop((c, m));
    srv.handle.shutdown().unwrap();
}

#[test]
fn values_up_to_the_limit_round_trip_and_large_replies_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = Client::connect(srv.seed).unwrap();
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    c.set("big", &big).unwrap();
    assert_eq!(c.get("big").unwrap(), big);
    // A multi-get whose reply (3 MiB) is far larger than the output flush
    // threshold.
    let values = c.get_many(&["big", "big", "big"]).unwrap();
    assert!(values.iter().all(|v| *v == big));
    let mut m = kvstore_net::McClient::connect(srv.mc).unwrap();
    m.set("big2", &big, 5, 0).unwrap();
    let item = m.get("big2").unwrap().unwrap();
    assert_eq!((item.value.len(), item.flags), (big.len(), 5));
    assert!(matches!(
        m.set("too-big", vec![0u8; (1 << 20) + 1], 0, 0),
        Err(Error::NotStored)
    ));
    // The connection is still in step after the refused value.
    assert_eq!(m.get("big2").unwrap().unwrap().value, big);
    drop((c, m));
    srv.handle.shutdown().unwrap();
}
