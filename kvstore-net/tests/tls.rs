//! TLS on both listeners, with a throwaway CA made in the test: the Rust
//! clients, client certificates required and refused, plaintext and
//! garbage on a TLS port, reloading the certificate without dropping
//! connections, and real clients (Python's `ssl` with pymemcache,
//! `openssl s_client`).

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::install::{ensure_apt, ensure_python, have};
use common::pki::{self, Pki};
use common::{start_with, wait_for, TestServer, DEADLINE};
use kvstore_net::tls::{TlsAcceptor, TlsConnector, TlsFiles};
use kvstore_net::{Client, ConnectOptions, Error, McClient};

fn tls_server(dir: &Path, pki: &Pki, client_ca: bool) -> (TestServer, Arc<TlsAcceptor>) {
    let acceptor = Arc::new(
        TlsAcceptor::new(TlsFiles {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: client_ca.then(|| pki.ca.clone()),
        })
        .unwrap(),
    );
    let mut config = common::config();
    config.tls = Some(Arc::clone(&acceptor));
    (start_with(&dir.join("data"), config), acceptor)
}

fn options(pki: &Pki, with_client_cert: bool) -> ConnectOptions {
    let client = with_client_cert.then_some((pki.client_cert.as_path(), pki.client_key.as_path()));
    ConnectOptions::default().tls(TlsConnector::new(&pki.ca, client).unwrap(), "127.0.0.1")
}

#[test]
fn both_dialects_work_over_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki::make(tmp.path(), "test");
    let (srv, _) = tls_server(tmp.path(), &pki, false);
    let opts = options(&pki, false);

    let mut seed = Client::connect_with(srv.seed, &opts).unwrap();
    seed.set("greeting", "hello over tls").unwrap();
    assert_eq!(seed.get("greeting").unwrap(), b"hello over tls");

    let mut mc = McClient::connect_with(srv.mc, &opts).unwrap();
    let item = mc.gets("greeting").unwrap().unwrap();
    assert_eq!(item.value, b"hello over tls");
    mc.set("big", vec![b'v'; 300_000], 7, 0).unwrap();
    let big = mc.gets("big").unwrap().unwrap();
    assert_eq!((big.value.len(), big.flags), (300_000, 7));
    drop((seed, mc));
    srv.handle.shutdown().unwrap();
}

#[test]
fn a_client_that_does_not_trust_the_ca_cannot_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki::make(tmp.path(), "test");
    let other = pki::make(tmp.path(), "other");
    let (srv, _) = tls_server(tmp.path(), &pki, false);
    match Client::connect_with(srv.seed, &options(&other, false)) {
        Err(Error::Connect { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a server signed by an unknown CA"),
    }
    srv.handle.shutdown().unwrap();
}

#[test]
fn client_certificates_are_required_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki::make(tmp.path(), "test");
    let stranger = pki::make(tmp.path(), "stranger");
    let (srv, _) = tls_server(tmp.path(), &pki, true);

    // Without a certificate, or with one from another CA: no request is
    // answered. (Under TLS 1.3 the client learns of the refusal on its
    // first read, so the failure may come at connect or at the request.)
    let foreign = ConnectOptions::default().tls(
        TlsConnector::new(
            &pki.ca,
            Some((
                stranger.client_cert.as_path(),
                stranger.client_key.as_path(),
            )),
        )
        .unwrap(),
        "127.0.0.1",
    );
    for opts in [options(&pki, false), foreign] {
        let outcome = Client::connect_with(srv.seed, &opts).and_then(|mut c| c.set("k", "v"));
        assert!(
            outcome.is_err(),
            "a client without a valid certificate was served"
        );
    }
    assert_eq!(srv.store.get("k").unwrap(), None);

    let mut known = Client::connect_with(srv.seed, &options(&pki, true)).unwrap();
    known.set("k", "v").unwrap();
    assert_eq!(known.get("k").unwrap(), b"v");
    drop(known);
    srv.handle.shutdown().unwrap();
}

/// Reads what the server sends until it closes (or the deadline).
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

#[test]
fn plaintext_and_garbage_on_a_tls_port_get_no_data_and_cost_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki::make(tmp.path(), "test");
    let (srv, _) = tls_server(tmp.path(), &pki, false);
    let mut client = Client::connect_with(srv.seed, &options(&pki, false)).unwrap();
    client.set("secret", "value").unwrap();

    let attempts: [(SocketAddr, &[u8]); 4] = [
        (srv.seed, b"get secret\r\n"),
        (srv.mc, b"get secret\r\nstats\r\n"),
        (srv.mc, &[0x80, 0x00, 0x00, 0x06, 0, 0, 0, 0]),
        (srv.seed, &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6]),
    ];
    for (addr, bytes) in attempts {
        let mut plain = TcpStream::connect(addr).unwrap();
        plain.write_all(bytes).unwrap();
        let got = read_all(&mut plain);
        // At most a TLS alert record (content type 21), never a reply.
        assert!(
            got.is_empty() || got[0] == 21,
            "plaintext got {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(!got.windows(5).any(|w| w == b"value" || w == b"STAT "));
    }
    // A client that connects and says nothing, then leaves.
    drop(TcpStream::connect(srv.seed).unwrap());

    // Nothing lasting: the failed connections are gone and the server
    // still serves.
    wait_for("failed handshakes to end", || srv.handle.connections() == 1);
    assert_eq!(client.get("secret").unwrap(), b"value");
    drop(client);
    srv.handle.shutdown().unwrap();
}

#[test]
fn certificate_reload_keeps_open_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let first = pki::make(tmp.path(), "first");
    let second = pki::make(tmp.path(), "second");
    let (srv, acceptor) = tls_server(tmp.path(), &first, false);
    let mut old = Client::connect_with(srv.seed, &options(&first, false)).unwrap();
    old.set("k", "1").unwrap();

    // New files under the same names, then a reload (what SIGHUP and
    // `refresh_certs` do).
    std::fs::copy(&second.server_cert, &first.server_cert).unwrap();
    std::fs::copy(&second.server_key, &first.server_key).unwrap();
    acceptor.reload().unwrap();

    // The open connection goes on; new ones need the new CA.
    old.set("k", "2").unwrap();
    assert!(Client::connect_with(srv.seed, &options(&first, false)).is_err());
    let mut new = Client::connect_with(srv.seed, &options(&second, false)).unwrap();
    assert_eq!(new.get("k").unwrap(), b"2");
    drop((old, new));
    srv.handle.shutdown().unwrap();
}

#[test]
fn python_ssl_with_pymemcache_and_openssl_s_client_talk_to_both_ports() {
    ensure_python("pymemcache", "pymemcache");
    ensure_apt("openssl", || have("openssl"));
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki::make(tmp.path(), "test");
    let (srv, _) = tls_server(tmp.path(), &pki, true);

    let script = r#"
import ssl, sys
from pymemcache.client.base import Client
port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
c = Client(("127.0.0.1", port), tls_context=ctx, connect_timeout=10, timeout=10)
c.set("py", b"from python", expire=0)
assert c.get("py") == b"from python", c.get("py")
assert c.incr("n", 1) is None
c.set("n", b"41")
assert c.incr("n", 1) == 42
print(ctx.protocol, "ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script, &srv.mc.port().to_string()])
        .arg(&pki.ca)
        .arg(&pki.client_cert)
        .arg(&pki.client_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pymemcache over TLS failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // openssl s_client on the memcached port: requests typed on its
    // stdin; `quit` makes the server close, which ends s_client (it waits
    // for the server after its stdin ends).
    let s_client = |addr: SocketAddr, extra: &[&str], input: &[u8]| {
        // `timeout` bounds it should the server never close.
        let mut child = Command::new("timeout")
            .args(["20", "openssl", "s_client", "-quiet", "-connect"])
            .arg(addr.to_string())
            .arg("-CAfile")
            .arg(&pki.ca)
            .arg("-cert")
            .arg(&pki.client_cert)
            .arg("-key")
            .arg(&pki.client_key)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let got = s_client(srv.mc, &[], b"get py\r\nquit\r\n");
    assert!(
        got.contains("VALUE py 0 11\r\nfrom python\r\nEND\r\n"),
        "{got}"
    );
    // TLS 1.1 is refused whatever the client offers.
    let got = s_client(srv.mc, &["-tls1_1"], b"version\r\nquit\r\n");
    assert!(!got.contains("VERSION"), "TLS 1.1 was served: {got}");
    srv.handle.shutdown().unwrap();
}

/// The binary re-reads its certificate and key on SIGHUP: new connections
/// get the new certificate, the open one goes on.
#[test]
fn the_binary_reloads_its_certificate_on_sighup() {
    let tmp = tempfile::tempdir().unwrap();
    let first = pki::make(tmp.path(), "first");
    let second = pki::make(tmp.path(), "second");
    let mut cmd = common::server_command(
        env!("CARGO_BIN_EXE_kvstore-server"),
        &tmp.path().join("data"),
    );
    cmd.arg("--tls-cert")
        .arg(&first.server_cert)
        .arg("--tls-key")
        .arg(&first.server_key);
    let srv = common::spawn(cmd);
    let mut old = McClient::connect_with(srv.mc.unwrap(), &options(&first, false)).unwrap();
    old.set("k", "1", 0, 0).unwrap();

    std::fs::copy(&second.server_cert, &first.server_cert).unwrap();
    std::fs::copy(&second.server_key, &first.server_key).unwrap();
    // SAFETY: kill only sends a signal to the child we started.
    let pid = srv.child.id() as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_for("the new certificate to be served", || {
        McClient::connect_with(srv.mc.unwrap(), &options(&second, false)).is_ok()
    });
    assert!(McClient::connect_with(srv.mc.unwrap(), &options(&first, false)).is_err());
    old.set("k", "2", 0, 0).unwrap();
    assert_eq!(old.gets("k").unwrap().unwrap().value, b"2");
    drop(old);
    let status = srv.terminate();
    assert!(status.success(), "{status:?}");
}
