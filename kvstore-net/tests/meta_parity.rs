//! The meta parser refuses malformed meta lines exactly as the real
//! memcached does: the same error line, and the same bytes skipped (what
//! follows is answered the same way). Each input is sent to a memcached
//! child process (installed with apt when missing) followed by `mn`, and
//! everything before `MN` is compared with the replies of the parser's
//! rejections for the same bytes.
//!
//! The deliberate differences (strict key bytes, strict base64, 32-bit
//! `F`, the `ms` data block skipped after a bad key, one reply for a bad
//! data chunk where memcached also runs the rest of its line) are pinned by the
//! unit tests of `protocol::meta` and listed in docs/PROTOCOL.md.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use common::DEADLINE;
use kvstore_net::protocol::memcached::Limits;
use kvstore_net::protocol::{meta, KeyPolicy, Parsed, Recovery};

const MEMCACHED: &str = "/usr/bin/memcached";

/// A memcached child process on a loopback port, stopped on drop.
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

fn ensure_memcached() {
    if Path::new(MEMCACHED).exists() {
        return;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
             apt-get install -y -qq memcached >/dev/null",
        )
        .status()
        .expect("running apt-get to install memcached");
    assert!(status.success(), "installing memcached failed");
    assert!(Path::new(MEMCACHED).exists());
}

fn start_memcached() -> Memcached {
    ensure_memcached();
    // memcached cannot report a port it picked: take a free one from the
    // OS, release it, and retry on the rare race with another process.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "memcached did not start");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(MEMCACHED)
            .args(["-u", "nobody", "-U", "0", "-l", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning memcached");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if TcpStream::connect(addr).is_ok() {
                return Memcached { child, addr };
            }
            if child.try_wait().ok().flatten().is_some() || start.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// What memcached answers to `input` followed by `mn`, up to its `MN`.
fn memcached_reply(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(input).unwrap();
    s.write_all(b"mn\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"MN\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "memcached closed on {input:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got.truncate(got.len() - 4);
    got
}

/// The replies of the parser's rejections for `input`; every step must be
/// a rejection (the inputs are all malformed).
fn parser_reply(input: &[u8]) -> Vec<u8> {
    let limits = Limits {
        max_value_bytes: 1 << 20,
        keys: KeyPolicy::Strict,
    };
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < input.len() {
        match meta::parse(&input[pos..], &limits) {
            Parsed::Reject(r) => {
                out.extend_from_slice(r.reply);
                match r.recovery {
                    Recovery::Discard(n) => pos += n as usize,
                    Recovery::Close => break,
                }
            }
            other => panic!("{input:?} at {pos}: expected a rejection, got {other:?}"),
        }
    }
    out
}

#[test]
fn malformed_meta_lines_get_memcacheds_replies() {
    let mc = start_memcached();
    let k251 = "k".repeat(251);
    let opaque33 = format!("O{}", "1".repeat(32));
    let inputs: Vec<String> = vec![
        "mg\r\n".into(),
        "md\r\n".into(),
        "ma\r\n".into(),
        "ms\r\n".into(),
        "mx k\r\n".into(),
        "me\r\n".into(),
        "me k b\r\n".into(),
        format!("mg {k251} v\r\n"),
        format!("md {k251}\r\n"),
        format!("ma {k251}\r\n"),
        format!("ms {k251} 2\r\nhi\r\n"),
        "mg k 5\r\n".into(),
        "mg k Z\r\n".into(),
        "mg k \u{7f}\r\n".into(),
        "mg k v v\r\n".into(),
        "mg k Oab Ocd\r\n".into(),
        "mg k v P1 P2\r\n".into(),
        "mg k Tabc\r\n".into(),
        "mg k T\r\n".into(),
        "mg k C\r\n".into(),
        "mg k Nx\r\n".into(),
        "mg k Rx\r\n".into(),
        "mg k M\r\n".into(),
        "mg k MEE\r\n".into(),
        format!("mg k {opaque33}\r\n"),
        format!("md k {opaque33}\r\n"),
        format!("ma k {opaque33}\r\n"),
        "mg Zm8 b\r\n".into(),
        "mg !!!! b v\r\n".into(),
        "mg k s t c f h l k O1 q u v T1 N1 R1 P L I M1 E1 C1 x\r\n".into(),
        "md k MEE\r\n".into(),
        "md k Tx\r\n".into(),
        "md k q q\r\n".into(),
        "md k Z\r\n".into(),
        "md !!!! b\r\n".into(),
        "ma k Dx\r\n".into(),
        "ma k D\r\n".into(),
        "ma k Jx\r\n".into(),
        "ma k MX\r\n".into(),
        "ms k\r\nhi\r\n".into(),
        "ms k x\r\nhi\r\n".into(),
        "ms k -1\r\nhi\r\n".into(),
        "ms k 2147483646\r\n".into(),
        "ms k 2 Z\r\nhi\r\n".into(),
        "ms k 2 E5\r\nhi\r\n".into(),
        "mg k E5\r\n".into(),
        "ms k 2 T1 T2\r\nhi\r\n".into(),
        "ms k 2 MX\r\nhi\r\n".into(),
        "ms k 2 MEE\r\nhi\r\n".into(),
        "ms k 2 Tx\r\nhi\r\n".into(),
        "ms k 2 Cx\r\nhi\r\n".into(),
        "ms k 0 F\r\n\r\n".into(),
        "ms k 0 F-1\r\n\r\n".into(),
        "ms k 2 b\r\nhi\r\n".into(),
        format!("ms k 2 {opaque33}\r\nhi\r\n"),
    ];
    for input in &inputs {
        let want = memcached_reply(mc.addr, input.as_bytes());
        let got = parser_reply(input.as_bytes());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{input:?}"
        );
    }
}
