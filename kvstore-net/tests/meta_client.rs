//! The meta commands against a real client: the Python `meta-memcache`
//! package (PyPI; installed with pip when missing) runs
//! `tests/clients/meta_memcache_check.py` against an in-process server:
//! values of several types, base64 keys, multi-get pipelines, modes,
//! touch, delete, counters, leases on a miss, stale-while-revalidate and
//! early recache.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::DEADLINE;

#[test]
fn meta_memcache_client_works() {
    common::install::ensure_python("meta_memcache", "meta-memcache");
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/meta_memcache_check.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .arg(server.mc.ip().to_string())
        .arg(server.mc.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script waits on leases with short sleeps; give it a few
    // deadlines, then stop it.
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE * 3 {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    server.handle.shutdown().unwrap();
}
