//! 10,000 concurrent connections to the `kvstore-server` binary. Ignored in
//! the normal run (it needs ~20,000 file descriptors and takes a while on 2
//! cores); run it with
//! `cargo test -p kvstore-net --release --test tests many_connections:: -- --ignored`.

use crate::common;

use std::io::Write;
use std::net::TcpStream;

use common::{expect, server_command, spawn};

fn raise_fd_limit() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    assert!(
        limit >= 20_000,
        "open-file limit {limit} is too low for this test"
    );
}

#[test]
#[ignore = "needs ~20,000 file descriptors; run explicitly"]
fn ten_thousand_concurrent_connections() {
    raise_fd_limit();
    const CONNS: usize = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = server_command(
        env!("CARGO_BIN_EXE_kvstore-server"),
        &tmp.path().join("data"),
    );
    cmd.args(["--max-connections", "12000"]);
    let srv = spawn(cmd);
    let mc = srv.mc.unwrap();
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        let addr = if i % 2 == 0 { srv.seed } else { mc };
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.set_read_timeout(Some(common::DEADLINE)).unwrap();
        conns.push(s);
    }
    // Every connection is served while all are open.
    for (i, s) in conns.iter_mut().enumerate() {
        if i % 2 == 0 {
            s.write_all(format!("set k{i} 1\r\nv\r\n").as_bytes())
                .unwrap();
            expect(s, b"STORED\r\n");
        } else {
            s.write_all(b"get k0\r\n").unwrap();
            expect(s, b"VALUE k0 0 1\r\nv\r\nEND\r\n");
        }
    }
    let mut stats = kvstore_net::McClient::connect(mc).unwrap();
    let curr: usize = stats
        .stats()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == "curr_connections")
        .unwrap()
        .1
        .parse()
        .unwrap();
    assert_eq!(curr, CONNS + 1);
    drop(conns);
    drop(stats);
    assert!(srv.terminate().success());
}
