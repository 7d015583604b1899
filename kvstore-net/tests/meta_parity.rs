//! kvstore-server answers meta commands as the real memcached does.
//!
//! - Malformed lines: the parser refuses them with the same error line and
//!   skips the same bytes (what follows is answered the same way). Each
//!   input is sent to a memcached child process (installed with apt when
//!   missing) followed by `mn`, and everything before `MN` is compared
//!   with the replies of the parser's rejections for the same bytes.
//! - Flows of valid commands (stores, modes, leases, stale marks, quiet
//!   pipelines, counters, base64 keys, mixed with text commands) get
//!   byte-identical replies from memcached and from a kvstore server.
//!   They leave out what differs by design: cas numbers (`c`), `ms ... s`,
//!   and `l` (a second boundary may fall between the two servers).
//!
//! The deliberate differences (strict key bytes, strict base64, 32-bit
//! `F`, the `ms` data block skipped after a bad key, one reply for a bad
//! data chunk where memcached also runs the rest of its line) are pinned by the
//! unit tests of `protocol::meta` and listed in docs/PROTOCOL.md.

use crate::common;

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
    // memcached cannot pick its own port (`-p 0` turns TCP off): take a
    // free one from the OS, and make sure it is *this* child that listens
    // there (its socket in /proc), not another test's memcached that won
    // the same port; retry when the child could not bind.
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
        loop {
            if listening_port(child.id()) == Some(port) {
                return Memcached {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                };
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

/// The loopback TCP port process `pid` listens on, if any yet.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|row| {
        // sl local_address rem_address st ... inode
        let cols: Vec<&str> = row.split_whitespace().collect();
        let (local, state, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
        if *state != "0A" || !inodes.iter().any(|i| i == inode) {
            return None;
        }
        u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
    })
}

/// What the server at `addr` answers to `input` followed by `mn`, up to
/// the `MN` of that `mn`.
fn memcached_reply(addr: SocketAddr, input: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(input).unwrap();
    s.write_all(b"mn\r\n").unwrap();
    // Every `mn` line of the input is answered `MN` too: read up to the
    // one added here.
    let mns = input
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"mn"))
        .count()
        + 1;
    let count = |got: &[u8]| got.windows(4).filter(|w| w == b"MN\r\n").count();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while count(&got) < mns || !got.ends_with(b"MN\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed on {input:?}");
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

#[test]
fn meta_flows_answer_as_memcached() {
    let mc = start_memcached();
    let dir = tempfile::tempdir().unwrap();
    let kv = common::start(dir.path());
    // Each flow uses its own keys: both servers keep state between flows.
    let flows: &[&[u8]] = &[
        b"ms k 2 T0 F5 k Oab\r\nhi\r\nmg k v t f s k Oxx h\r\n",
        b"ms a 2 T100\r\nhi\r\nmg a t v\r\nmg a h\r\nmg a h u\r\nmg a h\r\n",
        b"mg nn N30 s t v\r\nmg nn N30 s t v\r\nmg nn v\r\nms nn 3 T30\r\nnew\r\nmg nn v t\r\n",
        b"ms r 1 T10\r\nx\r\nmg r R30 v\r\nmg r R30 v\r\nmg r v\r\n",
        b"ms s 1\r\nx\r\nmd s I T30\r\nmg s v t\r\nmg s v\r\nmg s v\r\n",
        b"md nothere\r\nmd nothere q\r\nmd nothere O1 k\r\nms d 1\r\nx\r\nmd d q\r\nmd d\r\nmn\r\n",
        b"ma nope\r\nma nope q\r\nma nope N0 J10 v\r\nma nope v\r\nmn\r\n",
        b"ms c 2\r\n10\r\nma c\r\nma c v\r\nma c MD D5 v t\r\nma c M- D100 v\r\nma c M+ v q\r\nmn\r\n",
        b"ms c2 1\r\n5\r\nma c2 C1 v\r\nma c2 MX\r\nma c2 Dx\r\n",
        b"ms nn2 2\r\nab\r\nma nn2 v\r\n",
        b"ms c3 20\r\n18446744073709551615\r\nma c3 v\r\n",
        b"ms Zm9v 2 b\r\nhi\r\nmg Zm9v b k v\r\nmd Zm9v b k q\r\nmg foo v\r\n",
        b"ms k5 1\r\nx\r\nms k5 1 MA\r\ny\r\nms k5 1 MP\r\nz\r\nmg k5 v\r\n",
        b"ms kz 1 MA\r\ny\r\nms kx 1 ME\r\ny\r\nms kx 1 ME\r\ny\r\nms ky 1 MR\r\ny\r\n",
        b"ms kq 1 C1\r\nz\r\nms k6 1 q\r\nz\r\nms k6 1 q ME\r\nz\r\nms k6 1 q C1\r\nz\r\nmn\r\n",
        b"ms k7 1\r\nz\r\nmg k7 q\r\nmg miss q k O5\r\nmg k7 q v k\r\nmn\r\n",
        b"ms k8 1 T0\r\nz\r\nmg k8 T30\r\nmg k8 t\r\nma k9 N0 J5 T30 t v\r\n",
        b"ms kk 1 F7\r\nx\r\nms kk 1 MA\r\ny\r\nmg kk f v\r\n",
        b"set t 0 0 1\r\nx\r\nmg t v\r\nget t\r\nmn\r\nms t 5\r\nstats\r\nget t\r\n",
        b"mg\r\nmn foo\r\nmx\r\nmg nokey O\r\n",
        b"ms st 1 T0\r\nx\r\nmd st I\r\nmg st v\r\nms st 1\r\ny\r\nmg st v\r\n",
        b"ms dc 1\r\nx\r\nmd dc C1\r\nmd dc C1 q\r\nmn\r\n",
    ];
    for flow in flows {
        let want = memcached_reply(mc.addr, flow);
        let got = memcached_reply(kv.mc, flow);
        let (got, want) = (
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
        );
        assert!(
            same_but_ttl_tick(&got, &want),
            "{:?}\nkvstore:   {got:?}\nmemcached: {want:?}",
            String::from_utf8_lossy(flow)
        );
    }
    kv.handle.shutdown().unwrap();
}

/// Equal, except that a remaining TTL (`t<n>`) may be one second apart: the
/// two servers run a flow at different moments, and a second boundary may
/// fall between its store and its read on one of them only.
fn same_but_ttl_tick(a: &str, b: &str) -> bool {
    let ttl = |t: &str| t.strip_prefix('t').and_then(|n| n.parse::<i64>().ok());
    let ta: Vec<&str> = a.split([' ', '\r', '\n']).collect();
    let tb: Vec<&str> = b.split([' ', '\r', '\n']).collect();
    ta.len() == tb.len()
        && ta.iter().zip(&tb).all(|(x, y)| {
            x == y
                || match (ttl(x), ttl(y)) {
                    (Some(x), Some(y)) => (x - y).abs() <= 1,
                    _ => false,
                }
        })
}
