//! Helpers shared by the integration tests: an in-process server on port 0,
//! the built `kvstore-server` binary as a child process, raw sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_core::{Options, Store};
use kvstore_net::{Server, ServerConfig, ServerHandle};

pub mod install;
pub mod pki;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A server running in this process on 127.0.0.1, both dialects on port 0.
pub struct TestServer {
    pub handle: ServerHandle,
    pub store: Arc<Store>,
    pub seed: SocketAddr,
    pub mc: SocketAddr,
}

pub fn config() -> ServerConfig {
    ServerConfig {
        seed_port: Some(0),
        memcached_port: Some(0),
        ..ServerConfig::default()
    }
}

pub fn start(dir: &Path) -> TestServer {
    start_with(dir, config())
}

pub fn start_with(dir: &Path, config: ServerConfig) -> TestServer {
    let store = Arc::new(
        Store::open_with(dir, Options::new().max_value_bytes(config.max_value_bytes)).unwrap(),
    );
    let handle = Server::start(Arc::clone(&store), config).unwrap();
    let seed = handle.seed_addr().unwrap();
    let mc = handle.memcached_addr().unwrap();
    TestServer {
        handle,
        store,
        seed,
        mc,
    }
}

/// A raw connection with a read timeout.
pub fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads exactly `expected.len()` bytes and compares them.
pub fn expect(s: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading {:?}: {e}", String::from_utf8_lossy(expected)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Sends `request` and expects exactly `reply`.
pub fn round_trip(s: &mut TcpStream, request: &[u8], reply: &[u8]) {
    s.write_all(request).unwrap();
    expect(s, reply);
}

/// Reads until the peer closes; panics if it does not within the deadline.
pub fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        assert!(start.elapsed() < DEADLINE, "connection not closed");
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("read failed instead of eof: {e}"),
        }
    }
}

/// Reads one `\n`-terminated line.
pub fn line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while out.last() != Some(&b'\n') {
        s.read_exact(&mut b).unwrap();
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` until it holds or the deadline passes.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `kvstore-server` binary running as a child process.
pub struct ChildServer {
    pub child: Child,
    pub seed: SocketAddr,
    pub mc: Option<SocketAddr>,
    /// Everything the server logged so far.
    pub stderr: Arc<std::sync::Mutex<String>>,
}

pub fn server_command(bin: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--dir")
        .arg(dir)
        .args(["--port", "0", "--memcached-port", "0"])
        .env_remove("SERVER_PORT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Spawns the server and reads its `listening on` lines.
pub fn spawn(mut cmd: Command) -> ChildServer {
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seed = None;
    let mut mc = None;
    let expect_mc = cmd.get_args().any(|a| a == "--memcached-port");
    while seed.is_none() || (expect_mc && mc.is_none()) {
        let Some(line) = lines.next() else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.wait();
            panic!("server exited early: {err}");
        };
        let line = line.unwrap();
        let rest = line.strip_prefix("listening on ").unwrap();
        let (addr, dialect) = rest.split_once(' ').unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        match dialect {
            "(seed)" => seed = Some(addr),
            "(memcached)" => mc = Some(addr),
            other => panic!("unknown dialect {other}"),
        }
    }
    // Nothing more is printed on stdout; keep the pipes drained anyway.
    std::thread::spawn(move || for _ in lines {});
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(e) = child.stderr.take() {
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for l in BufReader::new(e).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
    }
    ChildServer {
        child,
        seed: seed.unwrap(),
        mc,
        stderr,
    }
}

impl ChildServer {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid, which has not been
        // waited for yet so it cannot have been reused.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("server did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
