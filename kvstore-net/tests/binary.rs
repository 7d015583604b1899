//! The `kvstore-server` binary as a child process: its stdout lines,
//! restart on the same directory (values, flags, cas and expiry survive),
//! SIGTERM/SIGINT, the store lock, a port in use, `--help`.

use crate::common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{server_command, spawn, wait_for, DEADLINE};
use kvstore_net::{Client, McCasOutcome, McClient};

const BIN: &str = env!("CARGO_BIN_EXE_kvstore-server");

/// Runs a server that is expected to exit by itself; its status and stderr.
fn run_to_exit(mut cmd: Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("server did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn restart_keeps_values_flags_cas_and_expiry_in_both_dialects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let srv = spawn(server_command(BIN, &dir));
    let mut seed = Client::connect(srv.seed).unwrap();
    let mut mc = McClient::connect(srv.mc.unwrap()).unwrap();
    seed.set("plain", "seed value").unwrap();
    seed.set(b"bin\xff", [0u8, 1, 2, 13, 10]).unwrap();
    mc.set("flagged", "mc value", 0xdead_beef, 0).unwrap();
    mc.set("long-lived", "x", 1, 100_000).unwrap();
    mc.set("short-lived", "x", 2, 2).unwrap();
    let cas = mc.gets("flagged").unwrap().unwrap().cas.unwrap();
    drop((seed, mc));
    let status = srv.terminate();
    assert!(status.success(), "SIGTERM exit status {status:?}");

    let srv = spawn(server_command(BIN, &dir));
    let mut seed = Client::connect(srv.seed).unwrap();
    let mut mc = McClient::connect(srv.mc.unwrap()).unwrap();
    assert_eq!(seed.get("plain").unwrap(), b"seed value");
    assert_eq!(seed.get(b"bin\xff").unwrap(), [0u8, 1, 2, 13, 10]);
    assert_eq!(seed.get("flagged").unwrap(), b"mc value");
    let item = mc.gets("flagged").unwrap().unwrap();
    assert_eq!(item.flags, 0xdead_beef);
    assert_eq!(item.cas, Some(cas), "cas changed across a restart");
    assert_eq!(mc.get("long-lived").unwrap().unwrap().flags, 1);
    // The 2 s expiry was kept as an absolute time: it still runs out.
    wait_for("short-lived to expire", || {
        mc.get("short-lived").unwrap().is_none()
    });
    // The cas read before the restart still works, once.
    assert_eq!(
        mc.cas("flagged", "new", 5, 0, cas).unwrap(),
        McCasOutcome::Stored
    );
    assert_eq!(
        mc.cas("flagged", "newer", 5, 0, cas).unwrap(),
        McCasOutcome::Exists
    );
    // A pending delayed flush_all survives a restart too.
    mc.flush_all(2).unwrap();
    drop((seed, mc));
    assert!(srv.terminate().success());
    let srv = spawn(server_command(BIN, &dir));
    let mut mc = McClient::connect(srv.mc.unwrap()).unwrap();
    wait_for("the delayed flush", || mc.get("plain").unwrap().is_none());
    drop(mc);
    assert!(srv.terminate().success());
}

#[test]
fn sigint_also_shuts_down_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = spawn(server_command(BIN, &tmp.path().join("data")));
    let mut c = Client::connect(srv.seed).unwrap();
    c.set("k", "v").unwrap();
    let pid = srv.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child, not yet waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let mut srv = srv;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "no exit after SIGINT");
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success());
}

#[test]
fn second_server_on_the_same_dir_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let first = spawn(server_command(BIN, &dir));
    let (status, err) = run_to_exit(server_command(BIN, &dir));
    assert!(!status.success());
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err:?}");
    assert!(lines[0].contains(dir.to_str().unwrap()), "{err:?}");
    // The first one is unaffected.
    let mut c = Client::connect(first.seed).unwrap();
    c.set("k", "v").unwrap();
    drop(c);
    assert!(first.terminate().success());
}

#[test]
fn port_in_use_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = Command::new(BIN);
    cmd.arg("--dir")
        .arg(tmp.path().join("data"))
        .args(["--port", &port.to_string()])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped());
    let (status, err) = run_to_exit(cmd);
    assert!(!status.success());
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains(&port.to_string()), "{err:?}");
}

#[test]
fn server_port_comes_from_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    // Find a free port, release it, and ask for it through SERVER_PORT.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    cmd.arg("--dir")
        .arg(tmp.path().join("data"))
        .env("SERVER_PORT", port.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let srv = spawn(cmd);
    assert_eq!(srv.seed.port(), port);
    assert!(srv.mc.is_none());
    assert!(srv.terminate().success());
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--dir",
        "--bind",
        "--port",
        "--memcached-port",
        "--durability",
        "--sync-interval-ms",
        "--max-connections",
        "--max-value-bytes",
        "--idle-timeout",
        "--cache-bytes",
        "--verbose",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}
