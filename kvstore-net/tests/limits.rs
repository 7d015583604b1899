//! The limits that protect the server: oversized values, long lines,
//! HTTP, idle connections, the connection bound, slow senders and clients
//! that vanish mid-request.

use crate::common;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use common::{expect, raw, read_to_eof, round_trip, start, start_with, wait_for};
use kvstore_net::{Client, McClient};

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn oversized_set_is_skipped_not_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = common::spawn(common::server_command(
        env!("CARGO_BIN_EXE_kvstore-server"),
        &tmp.path().join("data"),
    ));
    let pid = srv.child.id();
    let base = rss_kib(pid);
    for (addr, header, reply) in [
        (
            srv.seed,
            &b"set big 1000000000000\r\n"[..],
            &b"NOT-STORED\r\n"[..],
        ),
        (
            srv.mc.unwrap(),
            // The largest length memcached accepts on the line.
            b"set big 0 0 2147483645\r\n",
            b"SERVER_ERROR object too large for cache\r\n",
        ),
    ] {
        let mut s = raw(addr);
        // The reply comes at once: the server does not wait for the block.
        round_trip(&mut s, header, reply);
        // 64 MiB of the announced block are skipped as they arrive.
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            s.write_all(&chunk).unwrap();
        }
        let grown = rss_kib(pid).saturating_sub(base);
        assert!(
            grown < 32 * 1024,
            "server grew by {grown} KiB while skipping"
        );
        // The client vanishes mid-block; the server carries on.
        drop(s);
    }
    let mut c = Client::connect(srv.seed).unwrap();
    assert_eq!(c.get("big").unwrap(), b"");
    c.set("after", "ok").unwrap();
    assert_eq!(c.get("after").unwrap(), b"ok");
}

#[test]
fn long_lines_close_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    for (addr, reply) in [
        (srv.seed, &b"INVALID REQUEST\r\n"[..]),
        (srv.mc, b"CLIENT_ERROR line too long\r\n"),
    ] {
        let mut s = raw(addr);
        s.write_all(&[b'x'; 3000]).unwrap();
        assert_eq!(read_to_eof(&mut s), reply);
        // A line of exactly 2048 bytes is still a line.
        let mut s = raw(addr);
        let mut line = b"bogus ".to_vec();
        line.resize(2048, b'x');
        line.extend_from_slice(b"\r\n");
        s.write_all(&line).unwrap();
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut s, &mut got).unwrap();
        assert!(got.starts_with(b"INVAL") || got.starts_with(b"ERROR"));
    }
    // Retrieval lines may be much longer: a multi-get of 5,000 keys.
    let mut c = Client::connect(srv.seed).unwrap();
    c.set("k7", "seven").unwrap();
    let keys: Vec<String> = (0..5000).map(|i| format!("k{i}")).collect();
    let values = c.get_many(&keys).unwrap();
    assert_eq!(values.len(), 5000);
    assert_eq!(values[7], b"seven");
    let mut m = McClient::connect(srv.mc).unwrap();
    let hits = m.get_many(&keys, false).unwrap();
    assert_eq!(hits.len(), 1);
    drop((c, m));
    srv.handle.shutdown().unwrap();
}

#[test]
fn idle_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::config();
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let srv = start_with(tmp.path(), cfg);
    let mut idle = raw(srv.seed);
    let mut busy = raw(srv.mc);
    round_trip(&mut busy, b"version\r\n", b"VERSION ");
    assert_eq!(read_to_eof(&mut idle), b"");
    drop(busy);
    wait_for("all connections closed", || srv.handle.connections() == 0);
    srv.handle.shutdown().unwrap();
}

#[test]
fn connections_over_the_bound_are_refused_with_the_dialect_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::config();
    cfg.max_connections = 2;
    let srv = start_with(tmp.path(), cfg);
    let mut a = raw(srv.seed);
    let mut b = raw(srv.mc);
    wait_for("two connections", || srv.handle.connections() == 2);
    let mut over = raw(srv.seed);
    assert_eq!(read_to_eof(&mut over), b"INVALID REQUEST\r\n");
    let mut over = raw(srv.mc);
    assert_eq!(
        read_to_eof(&mut over),
        b"ERROR Too many open connections\r\n"
    );
    // The others keep working.
    round_trip(&mut a, b"set k 1\r\nv\r\n", b"STORED\r\n");
    round_trip(&mut b, b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n");
    // A freed slot can be used again.
    drop(a);
    wait_for("one connection", || srv.handle.connections() == 1);
    let mut c = raw(srv.seed);
    round_trip(&mut c, b"get k\r\n", b"VALUE k 1\r\nv\r\nEND\r\n");
    drop((b, c));
    srv.handle.shutdown().unwrap();
}

#[test]
fn a_slow_sender_does_not_slow_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let request = b"set slow 10\r\n0123456789\r\n";
    let (half, rest) = request.split_at(request.len() / 2);
    // The slow client sends half its request one byte at a time, then
    // waits for the fast client before it sends the rest.
    let (sent_half, half_is_in) = mpsc::channel();
    let (fast_done, may_finish) = mpsc::channel::<()>();
    let slow = {
        let addr = srv.seed;
        let half = half.to_vec();
        let rest = rest.to_vec();
        std::thread::spawn(move || {
            let mut s = raw(addr);
            for &b in &half {
                s.write_all(&[b]).unwrap();
            }
            sent_half.send(()).unwrap();
            may_finish.recv().unwrap();
            for &b in &rest {
                s.write_all(&[b]).unwrap();
            }
            expect(&mut s, b"STORED\r\n");
        })
    };
    half_is_in.recv().unwrap();
    // With the slow request half sent, another client completes hundreds
    // of round trips: nothing waits for the slow one.
    let mut c = Client::connect(srv.seed).unwrap();
    for i in 0..20 {
        c.set(format!("fast{i}"), format!("fast{i}")).unwrap();
    }
    for i in 0..300 {
        let key = format!("fast{}", i % 20);
        assert_eq!(c.get(&key).unwrap(), key.as_bytes());
    }
    assert_eq!(c.get("slow").unwrap(), b"", "half a request stored nothing");
    fast_done.send(()).unwrap();
    slow.join().unwrap();
    assert_eq!(c.get("slow").unwrap(), b"0123456789");
    drop(c);
    srv.handle.shutdown().unwrap();
}

#[test]
fn a_client_leaving_mid_block_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut c = Client::connect(srv.seed).unwrap();
    c.set("other", "intact").unwrap();
    for (addr, req) in [
        (srv.seed, &b"set half 10\r\nhello"[..]),
        (srv.seed, b"set half 5\r\nhello"),
        (srv.mc, b"set half 0 0 10\r\nhello"),
        (srv.seed, b"set half 5\r\nhello\r"),
    ] {
        let mut s = raw(addr);
        s.write_all(req).unwrap();
        drop(s);
    }
    // Only `c` is left once the server has seen every EOF.
    wait_for("the half-sent connections to end", || {
        srv.handle.connections() == 1
    });
    assert_eq!(c.get("half").unwrap(), b"");
    assert_eq!(c.get("other").unwrap(), b"intact");
    drop(c);
    srv.handle.shutdown().unwrap();
}

#[test]
fn shutdown_answers_requests_in_flight_and_closes_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.seed);
    round_trip(&mut s, b"set k 1\r\nv\r\n", b"STORED\r\n");
    let listener = listening_socket_inode(srv.seed).expect("the seed listener is listed");
    assert!(own_socket_inodes().contains(&listener));
    srv.handle.shutdown().unwrap();
    // The open connection was closed and the listener is gone: its socket
    // is no longer among this process's open files. (A connect would not
    // tell: another test may have been given the same port since.)
    assert_eq!(read_to_eof(&mut s), b"");
    assert!(!own_socket_inodes().contains(&listener));
    assert_eq!(srv.store.get("k").unwrap().as_deref(), Some(&b"v"[..]));
}

/// The inode of the socket listening on `addr`, from /proc/net/tcp.
fn listening_socket_inode(addr: SocketAddr) -> Option<u64> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{:04X}", addr.port());
    table.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        (cols.len() > 9 && cols[1].ends_with(&local) && cols[3] == LISTEN)
            .then(|| cols[9].parse().ok())
            .flatten()
    })
}

/// The inodes of the sockets this process has open.
fn own_socket_inodes() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?.to_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}
