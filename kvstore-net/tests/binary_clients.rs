//! Real clients of memcached's binary protocol against the
//! `kvstore-server` binary: libmemcached's `memccapable -b` (27 of 27),
//! npm `memjs`, Python `pylibmc` with `binary=True`, libmemcached's
//! command-line tools with `--binary`, and a byte-for-byte comparison with
//! the replies of a real memcached (`tests/clients/binary_compare.py`).
//!
//! A tool that is missing is installed (apt, npm, pip), as
//! `scripts/conformance.sh` does; a failed install fails the test.

use crate::common;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use common::install::{apt_install, have, pip_install};
use common::{server_command, spawn, ChildServer};

const BIN: &str = env!("CARGO_BIN_EXE_kvstore-server");

/// How long one client run may take.
const CLIENT_DEADLINE: Duration = Duration::from_secs(180);

/// Installs run one at a time (apt and npm hold locks).
static INSTALL: Mutex<()> = Mutex::new(());

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs `cmd` to completion within [`CLIENT_DEADLINE`]; its exit status
/// and everything it printed.
fn run(cmd: &mut Command) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let out_path = tmp.path().join("out");
    let out = File::create(&out_path).unwrap();
    let err = out.try_clone().unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CLIENT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish in {CLIENT_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let printed = String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned();
    (status.success(), printed)
}

fn must_run(what: &str, cmd: &mut Command) -> String {
    let (ok, printed) = run(cmd);
    assert!(ok, "{what} failed:\n{printed}");
    printed
}

/// The path of libmemcached's memcapable (Debian names it memccapable).
fn memcapable() -> &'static str {
    let _g = INSTALL.lock();
    if !have("memccapable") && !have("memcapable") {
        apt_install(&["libmemcached-tools"]);
    }
    if have("memccapable") {
        "memccapable"
    } else {
        "memcapable"
    }
}

/// A directory whose `node_modules` holds the pinned memjs.
fn memjs() -> PathBuf {
    let _g = INSTALL.lock();
    if !have("node") || !have("npm") {
        apt_install(&["nodejs", "npm"]);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("binary-clients");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = std::fs::read(clients_dir().join("package.json")).unwrap();
    let installed = dir.join("node_modules/memjs/package.json").exists()
        && std::fs::read(dir.join("package.json")).ok().as_ref() == Some(&manifest);
    if !installed {
        std::fs::write(dir.join("package.json"), &manifest).unwrap();
        must_run(
            "npm install",
            Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir),
        );
    }
    dir.join("node_modules")
}

fn pylibmc() {
    let _g = INSTALL.lock();
    let importable = || run(Command::new("python3").args(["-c", "import pylibmc"])).0;
    if importable() {
        return;
    }
    // pylibmc builds against libmemcached.
    apt_install(&["libmemcached-dev", "zlib1g-dev", "python3-dev", "gcc"]);
    assert!(pip_install("pylibmc"), "pip install pylibmc failed");
    assert!(importable(), "pylibmc installed but not importable");
}

/// A kvstore-server child process speaking both protocols on its
/// memcached port.
fn kvstore() -> (tempfile::TempDir, ChildServer, SocketAddr) {
    let tmp = tempfile::tempdir().unwrap();
    let srv = spawn(server_command(BIN, &tmp.path().join("data")));
    let mc = srv.mc.unwrap();
    (tmp, srv, mc)
}

#[test]
fn memcapable_binary_passes_all_27() {
    let tool = memcapable();
    let (_tmp, _srv, mc) = kvstore();
    let port = mc.port().to_string();
    let (ok, printed) =
        run(Command::new(tool).args(["-b", "-t", "10", "-h", "127.0.0.1", "-p", &port]));
    let passed = printed.matches("[pass]").count();
    assert!(
        ok && passed == 27 && printed.contains("All tests passed"),
        "{tool} -b: {passed} of 27 passed:\n{printed}"
    );
}

#[test]
fn memjs_works() {
    let node_modules = memjs();
    let (_tmp, _srv, mc) = kvstore();
    let printed = must_run(
        "memjs",
        Command::new("node")
            .arg(clients_dir().join("memjs_check.js"))
            .arg(mc.port().to_string())
            .env("NODE_PATH", &node_modules),
    );
    assert!(printed.contains("memjs: all checks passed"), "{printed}");
}

#[test]
fn pylibmc_binary_works() {
    pylibmc();
    let (_tmp, _srv, mc) = kvstore();
    let printed = must_run(
        "pylibmc",
        Command::new("python3")
            .arg(clients_dir().join("pylibmc_check.py"))
            .arg(mc.port().to_string()),
    );
    assert!(printed.contains("pylibmc: all checks passed"), "{printed}");
}

#[test]
fn libmemcached_tools_with_binary() {
    memcapable(); // the same package holds the tools
    let (tmp, _srv, mc) = kvstore();
    let servers = format!("--servers=127.0.0.1:{}", mc.port());
    let tool = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(name);
        cmd.arg("--binary")
            .arg(&servers)
            .args(args)
            .current_dir(tmp.path());
        run(&mut cmd)
    };
    let file = tmp.path().join("greeting.txt");
    std::fs::write(&file, b"hello over the binary protocol\n").unwrap();
    let name = "greeting.txt";
    assert!(tool("memccp", &[name]).0, "memccp");
    let (ok, printed) = tool("memccat", &[name]);
    assert!(
        ok && printed.contains("hello over the binary protocol"),
        "memccat: {printed}"
    );
    assert!(tool("memcexist", &[name]).0, "memcexist of a stored key");
    assert!(tool("memctouch", &["--expire=100", name]).0, "memctouch");
    assert!(tool("memcrm", &[name]).0, "memcrm");
    assert!(!tool("memcexist", &[name]).0, "memcexist after memcrm");
    let (ok, printed) = tool("memcstat", &[]);
    assert!(
        ok && printed.contains("version: 1.6.18"),
        "memcstat: {printed}"
    );
    assert!(tool("memccp", &[name]).0, "memccp again");
    assert!(tool("memcflush", &[]).0, "memcflush");
    assert!(!tool("memcexist", &[name]).0, "memcexist after memcflush");
}

/// A real memcached, speaking only the binary protocol on a Unix socket
/// (no port to race for), stopped on drop.
struct Memcached {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn memcached() -> Memcached {
    {
        let _g = INSTALL.lock();
        if !have("memcached") {
            apt_install(&["memcached"]);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("memcached.sock");
    let mut cmd = Command::new("memcached");
    cmd.args(["-B", "binary", "-I", "1m", "-a", "0777", "-s"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // memcached refuses to run as root; nobody must reach the socket's
        // directory.
        cmd.args(["-u", "nobody"]);
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
    }
    let mut mc = Memcached {
        child: cmd.spawn().unwrap(),
        socket,
        _dir: dir,
    };
    let start = Instant::now();
    while UnixStream::connect(&mc.socket).is_err() {
        assert!(
            mc.child.try_wait().unwrap().is_none(),
            "memcached exited at start"
        );
        assert!(
            start.elapsed() < common::DEADLINE,
            "memcached did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    mc
}

#[test]
fn replies_match_memcached_byte_for_byte() {
    let reference = memcached();
    let (_tmp, _srv, mc) = kvstore();
    let printed = must_run(
        "binary_compare.py",
        Command::new("python3")
            .arg(clients_dir().join("binary_compare.py"))
            .arg(&reference.socket)
            .arg(mc.port().to_string()),
    );
    assert!(printed.contains("replies identical"), "{printed}");
}
