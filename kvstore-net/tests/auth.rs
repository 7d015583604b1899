//! Authentication (`--auth-file`) and protected mode against a real server
//! over TCP: memcached's ASCII auth on the text and meta commands (raw
//! bytes as memcached's own `t/ascii-auth.t` checks them, and pymemcache),
//! SASL `PLAIN` on the binary protocol (raw bytes and memjs), the seed
//! dialect's `auth`; unauthenticated writes change nothing; the binary
//! refuses a shared auth file and an unprotected non-loopback address;
//! SIGHUP re-reads the file; auth over TLS and `refresh_certs`.

use crate::common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use common::install::{ensure_apt, ensure_python, have};
use common::{
    raw, read_to_eof, round_trip, server_command, spawn, start_with, wait_for, TestServer, DEADLINE,
};
use kvstore_core::Store;
use kvstore_net::auth::AuthFile;
use kvstore_net::tls::{TlsAcceptor, TlsFiles};
use kvstore_net::{Error, Server, ServerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_kvstore-server");

/// The users of memcached's `t/authfile`.
const USERS: &str = "foo:bar\nbaaaz:quux\n";

fn auth_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("authfile");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A server on both ports that requires the users of [`USERS`], with the
/// key `keep` = `original` already stored.
fn auth_server(dir: &Path) -> TestServer {
    let mut config = common::config();
    config.auth = Some(Arc::new(
        AuthFile::load(auth_file(dir, USERS, 0o600)).unwrap(),
    ));
    let srv = start_with(&dir.join("data"), config);
    srv.store.set("keep", "original").unwrap();
    srv
}

fn value(srv: &TestServer, key: &str) -> Option<Vec<u8>> {
    srv.store.get(key).unwrap()
}

#[test]
fn ascii_auth_answers_as_memcached_does() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    // The checks of memcached's t/ascii-auth.t, with the exact replies.
    let mut s = raw(srv.mc);
    round_trip(
        &mut s,
        b"set foo 0 0 2\r\nhi\r\n",
        b"CLIENT_ERROR bad authentication token format\r\n",
    );
    round_trip(&mut s, b"get foo\r\n", b"CLIENT_ERROR unauthenticated\r\n");
    round_trip(
        &mut s,
        b"set foo 0 0 7\r\nfoo bab\r\n",
        b"CLIENT_ERROR authentication failure\r\n",
    );
    round_trip(
        &mut s,
        b"set foo 0 0 2147483646\r\n",
        b"CLIENT_ERROR auth token too long\r\n",
    );
    round_trip(&mut s, b"set foo 0 0 7\r\nfoo bar\r\n", b"STORED\r\n");
    round_trip(&mut s, b"set toast 0 0 2\r\nhi\r\n", b"STORED\r\n");
    round_trip(
        &mut s,
        b"get toast\r\n",
        b"VALUE toast 0 2\r\nhi\r\nEND\r\n",
    );
    assert_eq!(value(&srv, "foo"), None, "the auth set stores nothing");

    let mut s2 = raw(srv.mc);
    round_trip(&mut s2, b"set foo 0 0 10\r\nbaaaz quux\r\n", b"STORED\r\n");
    round_trip(&mut s2, b"set toast2 0 0 2\r\nho\r\n", b"STORED\r\n");
    round_trip(
        &mut s2,
        b"get toast2\r\n",
        b"VALUE toast2 0 2\r\nho\r\nEND\r\n",
    );

    // Data not ended by \r\n, and the counters memcached keeps.
    let mut s3 = raw(srv.mc);
    round_trip(
        &mut s3,
        b"set k 1 2 7 noreply\r\nfoo barXY",
        b"CLIENT_ERROR bad command line termination\r\n",
    );
    round_trip(&mut s, b"stats\r\n", b"");
    let mut stats = Vec::new();
    while !stats.ends_with(b"END\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        stats.push(b[0]);
    }
    let stats = String::from_utf8(stats).unwrap();
    // Attempts: foo bab (failed), foo bar, baaaz quux.
    assert!(stats.contains("STAT auth_cmds 3\r\n"), "{stats}");
    assert!(stats.contains("STAT auth_errors 1\r\n"), "{stats}");
}

#[test]
fn meta_commands_need_the_ascii_auth_too() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(
        &mut s,
        b"mg keep v\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
    );
    round_trip(
        &mut s,
        b"ms keep 6 T0\r\nnewval\r\n",
        // The data line is a line of its own to memcached too.
        b"CLIENT_ERROR unauthenticated\r\nCLIENT_ERROR unauthenticated\r\n",
    );
    round_trip(
        &mut s,
        b"md keep q\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
    );
    assert_eq!(value(&srv, "keep").as_deref(), Some(&b"original"[..]));
    round_trip(&mut s, b"set foo 0 0 7\r\nfoo bar\r\n", b"STORED\r\n");
    round_trip(&mut s, b"mg keep v\r\n", b"VA 8\r\noriginal\r\n");
    // A line too short to be an authentication closes, as in memcached.
    let mut short = raw(srv.mc);
    short.write_all(b"mn\r\n").unwrap();
    assert_eq!(read_to_eof(&mut short), b"");
}

#[test]
fn unauthenticated_writes_change_nothing_in_any_dialect() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    let original = Some(b"original".to_vec());

    let mut t = raw(srv.mc);
    round_trip(
        &mut t,
        b"flush_all\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
    );
    round_trip(
        &mut t,
        b"delete keep\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
    );
    round_trip(
        &mut t,
        b"set keep 0 0 9\r\nnew value\r\n",
        b"CLIENT_ERROR authentication failure\r\n",
    );
    round_trip(
        &mut t,
        b"incr keep 1\r\n",
        b"CLIENT_ERROR unauthenticated\r\n",
    );
    assert_eq!(value(&srv, "keep"), original);

    let mut s = raw(srv.seed);
    round_trip(&mut s, b"delete\r\n", b"AUTH-REQUIRED\r\n");
    round_trip(&mut s, b"delete keep\r\n", b"AUTH-REQUIRED\r\n");
    round_trip(&mut s, b"set keep 3\r\nnew\r\n", b"AUTH-REQUIRED\r\n");
    round_trip(&mut s, b"get keep\r\n", b"AUTH-REQUIRED\r\n");
    assert_eq!(value(&srv, "keep"), original);

    // Binary: flush, delete and set each get "Auth failure." and close.
    for packet in [
        binary_packet(0x08, b"", b"", b""),
        binary_packet(0x04, b"", b"keep", b""),
        binary_packet(0x01, &[0; 8], b"keep", b"new"),
        binary_packet(0x18, b"", b"", b""), // flushq: answered anyway
    ] {
        let mut b = raw(srv.mc);
        b.write_all(&packet).unwrap();
        let reply = read_to_eof(&mut b);
        assert_eq!(reply.len(), 24 + 13, "{reply:?}");
        assert_eq!(&reply[6..8], &[0x00, 0x20], "status Auth error");
        assert_eq!(&reply[24..], b"Auth failure.");
    }
    // An oversized set before authentication keeps the old value too
    // (memcached would drop it after an authenticated one).
    let mut b = raw(srv.mc);
    let big = vec![b'x'; (1 << 20) + 1];
    let mut packet = binary_packet(0x01, &[0; 8], b"keep", b"");
    let total = (8 + 4 + big.len()) as u32;
    packet[8..12].copy_from_slice(&total.to_be_bytes());
    b.write_all(&packet).unwrap();
    let _ = b.write_all(&big);
    let reply = read_to_eof(&mut b);
    assert_eq!(&reply[6..8], &[0x00, 0x20], "{reply:?}");
    assert_eq!(value(&srv, "keep"), original);
}

/// A binary request packet (magic 0x80) with opaque 0x01020304.
fn binary_packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, opcode];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.push(extras.len() as u8);
    p.extend_from_slice(&[0, 0, 0]);
    let total = (extras.len() + key.len() + value.len()) as u32;
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[1, 2, 3, 4]);
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

/// Reads one binary response: (opcode, status, key, value).
fn binary_response(s: &mut TcpStream) -> (u8, u16, Vec<u8>, Vec<u8>) {
    let mut h = [0u8; 24];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[0], 0x81, "response magic");
    assert_eq!(&h[12..16], &[1, 2, 3, 4], "opaque echoed");
    let key_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let extras = usize::from(h[4]);
    let total = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    let mut body = vec![0u8; total];
    s.read_exact(&mut body).unwrap();
    let key = body[extras..extras + key_len].to_vec();
    let value = body[extras + key_len..].to_vec();
    (h[1], u16::from_be_bytes([h[6], h[7]]), key, value)
}

#[test]
fn binary_sasl_plain_as_memcached_with_sasl() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    let mut s = raw(srv.mc);
    s.write_all(&binary_packet(0x20, b"", b"", b"")).unwrap();
    assert_eq!(
        binary_response(&mut s),
        (0x20, 0, vec![], b"PLAIN".to_vec())
    );
    // version is served before authentication, as in memcached.
    s.write_all(&binary_packet(0x0b, b"", b"", b"")).unwrap();
    assert_eq!(binary_response(&mut s).1, 0);
    s.write_all(&binary_packet(0x21, b"", b"PLAIN", b"\0foo\0bab"))
        .unwrap();
    assert_eq!(
        binary_response(&mut s),
        (0x21, 0x20, vec![], b"Auth failure.".to_vec())
    );
    // Another mechanism is refused the same way.
    s.write_all(&binary_packet(0x21, b"", b"CRAM-MD5", b"foo"))
        .unwrap();
    assert_eq!(binary_response(&mut s).1, 0x20);
    s.write_all(&binary_packet(0x21, b"", b"PLAIN", b"\0foo\0bar"))
        .unwrap();
    assert_eq!(
        binary_response(&mut s),
        (0x21, 0, vec![], b"Authenticated".to_vec())
    );
    s.write_all(&binary_packet(0x00, b"", b"keep", b""))
        .unwrap();
    let (_, status, _, value) = binary_response(&mut s);
    assert_eq!((status, value), (0, b"original".to_vec()));

    // An authorization identity other than the user is refused.
    let mut s2 = raw(srv.mc);
    s2.write_all(&binary_packet(0x21, b"", b"PLAIN", b"baaaz\0foo\0bar"))
        .unwrap();
    assert_eq!(binary_response(&mut s2).1, 0x20);
    s2.write_all(&binary_packet(0x21, b"", b"PLAIN", b"baaaz\0baaaz\0quux"))
        .unwrap();
    assert_eq!(binary_response(&mut s2).1, 0);
}

#[test]
fn seed_dialect_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    let mut s = raw(srv.seed);
    round_trip(&mut s, b"get keep\r\n", b"AUTH-REQUIRED\r\n");
    // A set's data block is consumed before the refusal: the next line is
    // read as a request, not as data.
    round_trip(
        &mut s,
        b"set keep 7\r\nget x\r\n\r\nauth foo bab\r\n",
        b"AUTH-REQUIRED\r\nAUTH-FAILED\r\n",
    );
    // A rejected request (a bad key) is refused the same way.
    round_trip(&mut s, b"get \x01\r\n", b"AUTH-REQUIRED\r\n");
    round_trip(&mut s, b"auth foo\r\n", b"AUTH-REQUIRED\r\n");
    round_trip(&mut s, b"auth foo bar\r\n", b"AUTHENTICATED\r\n");
    round_trip(
        &mut s,
        b"get keep\r\n",
        b"VALUE keep 8\r\noriginal\r\nEND\r\n",
    );
    // A failed auth later keeps the connection authenticated, as Redis.
    round_trip(&mut s, b"auth foo nope\r\n", b"AUTH-FAILED\r\n");
    round_trip(&mut s, b"set k 1\r\nv\r\n", b"STORED\r\n");
    round_trip(&mut s, b"auth baaaz quux\r\n", b"AUTHENTICATED\r\n");
}

#[test]
fn without_an_auth_file_nothing_changes_and_auth_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start_with(tmp.path(), common::config());
    let mut s = raw(srv.seed);
    round_trip(&mut s, b"set k 1\r\nv\r\n", b"STORED\r\n");
    // As Redis' AUTH without a configured password: an error, never a
    // pretended success that would make the client believe it is
    // protected.
    round_trip(&mut s, b"auth foo bar\r\n", b"AUTH-FAILED\r\n");
    round_trip(&mut s, b"get k\r\n", b"VALUE k 1\r\nv\r\nEND\r\n");
    let mut t = raw(srv.mc);
    round_trip(&mut t, b"set foo 0 0 7\r\nfoo bar\r\n", b"STORED\r\n");
    round_trip(
        &mut t,
        b"get foo\r\n",
        b"VALUE foo 0 7\r\nfoo bar\r\nEND\r\n",
    );
    // refresh_certs without TLS: an unknown command, as memcached without TLS.
    round_trip(&mut t, b"refresh_certs\r\n", b"ERROR\r\n");
    let mut b = raw(srv.mc);
    b.write_all(&binary_packet(0x20, b"", b"", b"")).unwrap();
    assert_eq!(binary_response(&mut b).1, 0x81, "unknown command");
}

#[test]
fn protected_mode_in_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(tmp.path().join("data")).unwrap());
    let open = ServerConfig {
        bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        seed_port: Some(0),
        memcached_port: Some(0),
        ..ServerConfig::default()
    };
    let Err(err) = Server::start(Arc::clone(&store), open.clone()) else {
        panic!("0.0.0.0 without protection started");
    };
    assert!(matches!(err, Error::Unprotected(_)), "{err:?}");
    let msg = err.to_string();
    for choice in [
        "protected mode",
        "--auth-file",
        "--tls-ca",
        "--unprotected",
        "127.0.0.1",
    ] {
        assert!(msg.contains(choice), "{choice} missing from: {msg}");
    }
    let with_auth = ServerConfig {
        auth: Some(Arc::new(
            AuthFile::load(auth_file(tmp.path(), USERS, 0o600)).unwrap(),
        )),
        ..open.clone()
    };
    Server::start(Arc::clone(&store), with_auth)
        .unwrap()
        .shutdown()
        .unwrap();
    let unprotected = ServerConfig {
        unprotected: true,
        ..open.clone()
    };
    Server::start(Arc::clone(&store), unprotected)
        .unwrap()
        .shutdown()
        .unwrap();
    // TLS without client certificates keeps nobody out: still refused.
    let pki = common::pki::make(tmp.path(), "test");
    let tls = |client_ca: Option<PathBuf>| {
        Arc::new(
            TlsAcceptor::new(TlsFiles {
                cert: pki.server_cert.clone(),
                key: pki.server_key.clone(),
                client_ca,
            })
            .unwrap(),
        )
    };
    let tls_only = ServerConfig {
        tls: Some(tls(None)),
        ..open.clone()
    };
    assert!(Server::start(Arc::clone(&store), tls_only).is_err());
    let client_certs = ServerConfig {
        tls: Some(tls(Some(pki.ca.clone()))),
        ..open
    };
    Server::start(Arc::clone(&store), client_certs)
        .unwrap()
        .shutdown()
        .unwrap();
}

/// Runs the binary to its exit; its status code and stderr.
fn run_to_exit(mut cmd: Command) -> (Option<i32>, String) {
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code(), err);
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn the_binary_refuses_a_shared_auth_file_and_an_unprotected_address() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = auth_file(tmp.path(), USERS, 0o644);
    let mut cmd = server_command(BIN, &data);
    cmd.arg("--auth-file").arg(&file);
    let (code, err) = run_to_exit(cmd);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("readable by group or others"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    let mut cmd = server_command(BIN, &data);
    cmd.args(["--bind", "0.0.0.0"]);
    let (code, err) = run_to_exit(cmd);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("protected mode"), "{err}");
    assert!(!data.exists(), "a refused start creates no store directory");

    // Either way out starts it.
    let mut cmd = server_command(BIN, &data);
    cmd.args(["--bind", "0.0.0.0", "--unprotected"]);
    let srv = spawn(cmd);
    let mut s = raw(SocketAddr::from(([127, 0, 0, 1], srv.seed.port())));
    round_trip(&mut s, b"set k 1\r\nv\r\n", b"STORED\r\n");
    assert!(srv.terminate().success());

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = server_command(BIN, &data);
    cmd.args(["--bind", "0.0.0.0", "--auth-file"]).arg(&file);
    let srv = spawn(cmd);
    let mut s = raw(SocketAddr::from(([127, 0, 0, 1], srv.seed.port())));
    round_trip(&mut s, b"get k\r\n", b"AUTH-REQUIRED\r\n");
    round_trip(&mut s, b"auth foo bar\r\n", b"AUTHENTICATED\r\n");
    round_trip(&mut s, b"get k\r\n", b"VALUE k 1\r\nv\r\nEND\r\n");
    assert!(srv.terminate().success());
}

#[test]
fn sighup_rereads_the_auth_file_and_failures_are_logged_without_passwords() {
    let tmp = tempfile::tempdir().unwrap();
    let file = auth_file(tmp.path(), "alice:first-secret\n", 0o600);
    let mut cmd = server_command(BIN, &tmp.path().join("data"));
    cmd.arg("--auth-file").arg(&file);
    let srv = spawn(cmd);
    let try_auth = |password: &str| {
        let mut s = raw(srv.seed);
        s.write_all(format!("auth alice {password}\r\n").as_bytes())
            .unwrap();
        common::line(&mut s)
    };
    assert_eq!(try_auth("first-secret"), "AUTHENTICATED\r\n");
    assert_eq!(try_auth("wrong-guess"), "AUTH-FAILED\r\n");
    auth_file(tmp.path(), "alice:second-secret\n", 0o600);
    let pid = srv.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_for("the new password", || {
        try_auth("second-secret") == "AUTHENTICATED\r\n"
    });
    assert_eq!(try_auth("first-secret"), "AUTH-FAILED\r\n");
    wait_for("the failure in the log", || {
        srv.stderr.lock().unwrap().contains("failed")
    });
    let log = srv.stderr.lock().unwrap().clone();
    assert!(log.contains("127.0.0.1:"), "the peer is logged: {log}");
    for secret in ["wrong-guess", "first-secret", "second-secret"] {
        assert!(!log.contains(secret), "a password in the log: {log}");
    }
    assert!(srv.terminate().success());
}

#[test]
fn pymemcache_authenticates_with_a_set_also_over_tls() {
    ensure_python("pymemcache", "pymemcache");
    let tmp = tempfile::tempdir().unwrap();
    let pki = common::pki::make(tmp.path(), "test");
    let mut config = common::config();
    config.auth = Some(Arc::new(
        AuthFile::load(auth_file(tmp.path(), USERS, 0o600)).unwrap(),
    ));
    config.tls = Some(Arc::new(
        TlsAcceptor::new(TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: None,
        })
        .unwrap(),
    ));
    let srv = start_with(&tmp.path().join("data"), config);
    let script = r#"
import socket, ssl, sys
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError
port, ca, cert = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
def client():
    return Client(("127.0.0.1", port), tls_context=ctx, default_noreply=False,
                  connect_timeout=10, timeout=10)
c = client()
try:
    c.get("keep")
    raise SystemExit("a get before authentication succeeded")
except MemcacheClientError as e:
    assert "unauthenticated" in str(e), e
c = client()
try:
    c.set("auth", b"foo wrong")
    raise SystemExit("a wrong password was accepted")
except MemcacheClientError as e:
    assert "authentication failure" in str(e), e
assert c.set("auth", b"foo bar") is True
c.set("py", b"over tls")
assert c.get("py") == b"over tls", c.get("py")
# refresh_certs over the same connection: OK, then the reason when the
# certificate file is gone.
raw = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
f = raw.makefile("rb")
raw.sendall(b"set a 0 0 7\r\nfoo bar\r\nrefresh_certs\r\n")
assert f.readline() == b"STORED\r\n"
line = f.readline()
assert line == b"OK\r\n", line
import os
os.rename(cert, cert + ".gone")
raw.sendall(b"refresh_certs\r\n")
line = f.readline()
assert line.startswith(b"SERVER_ERROR "), line
os.rename(cert + ".gone", cert)
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &srv.mc.port().to_string()])
        .arg(&pki.ca)
        .arg(&pki.server_cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pymemcache failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(srv.store.get("auth").unwrap(), None);
}

/// A directory whose `node_modules` holds the pinned memjs (as
/// tests/binary_clients.rs installs it).
fn memjs() -> PathBuf {
    if !have("node") || !have("npm") {
        ensure_apt("nodejs", || have("node"));
        ensure_apt("npm", || have("npm"));
    }
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("auth-clients");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read(clients.join("package.json")).unwrap();
    let installed = dir.join("node_modules/memjs/package.json").exists()
        && std::fs::read(dir.join("package.json")).ok().as_ref() == Some(&manifest);
    if !installed {
        std::fs::write(dir.join("package.json"), &manifest).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "npm install memjs failed");
    }
    dir.join("node_modules")
}

#[test]
fn memjs_authenticates_with_sasl_plain() {
    let node_modules = memjs();
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    let script = r#"
'use strict';
const memjs = require('memjs');
const port = process.argv[1];
const make = (opts) => memjs.Client.create('127.0.0.1:' + port,
  Object.assign({ retries: 0, timeout: 5, logger: { log: () => {} } }, opts));
async function main() {
  const good = make({ username: 'foo', password: 'bar' });
  const got = await good.get('keep');
  if (got.value.toString() !== 'original') throw new Error('get: ' + got.value);
  if (!(await good.set('js', 'v', {}))) throw new Error('set');
  good.close();
  for (const opts of [{ username: 'foo', password: 'wrong' }, {}]) {
    const bad = make(opts);
    let refused = false;
    await bad.flush().then(() => {}, () => { refused = true; });
    bad.close();
    if (!refused) throw new Error('flush without the right password: ' + JSON.stringify(opts));
  }
  console.log('ok');
}
main().catch((e) => { console.error(e); process.exit(1); });
"#;
    let out = Command::new("node")
        .args(["-e", script, &srv.mc.port().to_string()])
        .env("NODE_PATH", &node_modules)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "memjs failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(value(&srv, "keep").as_deref(), Some(&b"original"[..]));
    assert_eq!(value(&srv, "js").as_deref(), Some(&b"v"[..]));
}

/// The Rust clients authenticate with `ConnectOptions::credentials`
/// (seed: `auth`; memcached: the ASCII auth), and `Cluster` with
/// `ClusterOptions::credentials`; wrong credentials are `Error::Auth` at
/// connect, and the password never shows in a debug print.
#[test]
fn rust_clients_authenticate_with_credentials() {
    use kvstore_net::{
        Client, Cluster, ClusterOptions, ConnectOptions, Credentials, McClient, ServerSpec,
    };
    let tmp = tempfile::tempdir().unwrap();
    let srv = auth_server(tmp.path());
    let good = ConnectOptions::default().credentials(Credentials::new("foo", "bar"));
    let bad = ConnectOptions::default().credentials(Credentials::new("foo", "nope"));
    assert!(!format!("{good:?}").contains("bar"), "{good:?}");

    let mut seed = Client::connect_with(srv.seed, &good).unwrap();
    seed.set("from-seed", "1").unwrap();
    assert_eq!(seed.get("keep").unwrap(), b"original");
    let mut mc = McClient::connect_with(srv.mc, &good).unwrap();
    mc.set("from-mc", "2", 0, 0).unwrap();
    assert_eq!(mc.gets("from-seed").unwrap().unwrap().value, b"1");
    for result in [
        Client::connect_with(srv.seed, &bad).map(drop),
        McClient::connect_with(srv.mc, &bad).map(drop),
    ] {
        assert!(matches!(result, Err(Error::Auth(_))), "{result:?}");
    }
    // Spaces cannot travel in the text protocols' auth: refused before
    // anything is sent.
    let spaced = ConnectOptions::default().credentials(Credentials::new("foo", "b ar"));
    assert!(matches!(
        Client::connect_with(srv.seed, &spaced),
        Err(Error::InvalidRequest(_))
    ));

    let spec = ServerSpec::new("127.0.0.1", srv.mc.port(), 1);
    let mut cluster = Cluster::connect_with(
        std::slice::from_ref(&spec),
        ClusterOptions::default().credentials(Credentials::new("baaaz", "quux")),
    )
    .unwrap();
    cluster.set("from-cluster", "3").unwrap();
    assert_eq!(cluster.get("from-mc").unwrap(), Some(b"2".to_vec()));
    let mut refused = Cluster::connect_with(
        &[spec],
        ClusterOptions::default().credentials(Credentials::new("baaaz", "wrong")),
    )
    .unwrap();
    assert!(refused.set("x", "y").is_err());
    assert_eq!(value(&srv, "x"), None);
}
