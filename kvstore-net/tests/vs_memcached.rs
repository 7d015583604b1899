//! The same bytes sent to kvstore-server and to a real memcached 1.6 give
//! the same replies: every error line clients match on, `noreply`
//! silencing, tolerated tokens, lengths memcached refuses, the removal of
//! a value whose replacement was too large, the operators' replies.
//! memcached is installed (apt) when missing.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::{raw, start, DEADLINE};

struct Memcached {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_memcached() -> bool {
    Command::new("sh")
        .args(["-c", "command -v memcached"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_memcached() -> Memcached {
    if !have_memcached() {
        // SAFETY: geteuid has no preconditions.
        let sudo: &[&str] = if unsafe { libc::geteuid() } == 0 {
            &[]
        } else {
            &["sudo"]
        };
        for args in [
            &["apt-get", "update", "-qq"][..],
            &["apt-get", "install", "-y", "-qq", "memcached"],
        ] {
            let mut cmd = Command::new(sudo.first().copied().unwrap_or(args[0]));
            cmd.args(if sudo.is_empty() { &args[1..] } else { args })
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null());
            let _ = cmd.status();
        }
        assert!(have_memcached(), "cannot install memcached");
    }
    // memcached cannot report a port it picked: take a free one.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new("memcached");
    cmd.args(["-l", "127.0.0.1", "-U", "0", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["-u", "nobody"]);
    }
    let child = cmd.spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < DEADLINE, "memcached did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Memcached { child, addr }
}

/// Sends `request` then `version\r\n`, and returns everything answered
/// before the version line (the sentinel marks the end of the replies).
fn replies(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    const SENTINEL: &[u8] = b"VERSION 1.6.18\r\n";
    let mut s = raw(addr);
    s.write_all(request).unwrap();
    s.write_all(b"version\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(SENTINEL) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got.truncate(got.len() - SENTINEL.len());
    got
}

#[test]
fn same_bytes_same_replies() {
    let mc = start_memcached();
    let tmp = tempfile::tempdir().unwrap();
    let kv = start(tmp.path());
    let big = [
        b"set big 0 0 2000000\r\n".as_slice(),
        &vec![b'x'; 2_000_000],
        b"\r\n",
    ]
    .concat();
    let cases: Vec<Vec<u8>> = [
        &b"set k 0 0 4294967295\r\nset k 0 0 1\r\na\r\nget k\r\n"[..],
        b"set k 0 0 -1\r\nset k 0 0 2147483646\r\n",
        b"set k 0 0\r\nset k 0 0 1 2 3\r\nset k 0 abc 1\r\n",
        b"set k 0 abc 1 noreply\r\nincr k x noreply\r\ntouch k x noreply\r\n",
        b"delete k 10 noreply\r\ndelete k 10\r\ndelete k 0\r\ndelete k noreplY\r\n",
        b"delete\r\ndelete a b c d e\r\n",
        b"set t 0 0 1 noreplY\r\n1\r\nincr t 1 noreplY\r\ntouch t 1 noreplY\r\n",
        b"cas t 0 0 1 999 foo\r\nx\r\ncas t 0 0 1 \r\ncas t 0 0 1 999 \r\nx\r\n",
        b"set nn 0 0 1\r\nx\r\nincr nn 1 noreply\r\nincr nn 1\r\nincr nn -1\r\n",
        b"touch k\r\ntouch k abc\r\ngat abc k\r\ngat\r\ngat 10\r\nincr k\r\n",
        b"flush_all x\r\nflush_all x noreply\r\nflush_all 0 noreplY\r\nflush_all 0 2\r\n",
        b"verbosity\r\nverbosity x\r\nverbosity 1 2 3\r\nverbosity 1\r\nverbosity x noreply\r\n",
        b"version foo bar\r\nversion noreply\r\nstats noreply\r\nstats bogus\r\n",
        b"get\r\ngets\r\nbogus\r\n\r\n",
        b"stats detail\r\nstats detail x\r\nstats detail on\r\nset p:a 0 0 1\r\nx\r\n\
          get p:a p:b\r\ndelete p:b\r\nstats detail dump\r\nstats detail off\r\n",
        b"stats cachedump\r\nstats cachedump x\r\nstats cachedump 1\r\nstats cachedump 200 0\r\n",
        b"lru_crawler metadump\r\nlru_crawler foo\r\n",
        b"cache_memlimit 100\r\ncache_memlimit\r\ncache_memlimit x\r\ncache_memlimit 1\r\n\
          cache_memlimit 100 noreply\r\n",
        b"shutdown\r\nstats reset\r\nstats sizes\r\n",
    ]
    .iter()
    .map(|c| c.to_vec())
    .chain([
        big,
        b"get big\r\n".to_vec(),
        // A refused append keeps the old value, silently with noreply.
        [
            b"set old 0 0 3\r\nold\r\nappend old 0 0 2000000 noreply\r\n".as_slice(),
            &vec![b'z'; 2_000_000],
            b"\r\nget old\r\n",
        ]
        .concat(),
    ])
    .collect();
    for case in &cases {
        let want = replies(mc.addr, case);
        let got = replies(kv.mc, case);
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "for {:?}",
            String::from_utf8_lossy(&case[..case.len().min(200)])
        );
    }
    // A set refused for size removed the old value in both.
    let set_big = [
        b"set old 0 0 2000000\r\n".as_slice(),
        &vec![b'y'; 2_000_000],
        b"\r\n",
    ]
    .concat();
    for addr in [mc.addr, kv.mc] {
        assert_eq!(
            replies(addr, &set_big),
            b"SERVER_ERROR object too large for cache\r\n"
        );
        assert_eq!(replies(addr, b"get old\r\n"), b"END\r\n");
    }
    kv.handle.shutdown().unwrap();
}
