//! Tools and clients written by others against the `kvstore-server`
//! binary, as a memcached user runs them: libmemcached's memcping,
//! memcstat, memcdump and memccapable (ASCII half), Debian's
//! memcached-tool, and Python's pymemcache. Each tool is installed when
//! missing (apt, pip); a tool that cannot be installed fails the test.

use crate::common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::install::{ensure_apt, ensure_python, have};
use common::{raw, round_trip, server_command, spawn, ChildServer};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn server(dir: &Path) -> (ChildServer, String) {
    let srv = spawn(server_command(env!("CARGO_BIN_EXE_kvstore-server"), dir));
    let addr = srv.mc.unwrap().to_string();
    (srv, addr)
}

#[test]
fn libmemcached_tools() {
    ensure_apt("libmemcached-tools", || {
        have("memcping") && have("memccapable")
    });
    let tmp = tempfile::tempdir().unwrap();
    let (srv, addr) = server(&tmp.path().join("d"));
    let mut s = raw(srv.mc.unwrap());
    round_trip(
        &mut s,
        b"set tool:a 0 0 1\r\na\r\nset tool:b 0 0 1\r\nb\r\n",
        b"STORED\r\nSTORED\r\n",
    );
    let servers = format!("--servers={addr}");

    // libmemcached refused `VERSION 0.1.0` and these stopped at once.
    run(Command::new("memcping").arg(&servers));
    let stat = run(Command::new("memcstat").arg(&servers));
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(stat.contains("version: 1.6.18"), "{stat}");
    assert!(stat.contains("curr_items: 2"), "{stat}");
    let dump = run(Command::new("memcdump").arg(&servers));
    let mut keys: Vec<String> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    keys.sort();
    assert_eq!(keys, ["tool:a", "tool:b"]);

    let (host, port) = addr.rsplit_once(':').unwrap();
    let out = Command::new("memccapable")
        .args(["-a", "-t", "10", "-h", host, "-p", port])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(log.matches("[pass]").count(), 27, "{log}");
    assert!(
        out.status.success() && log.contains("All tests passed"),
        "{log}"
    );
}

#[test]
fn debian_memcached_tool() {
    let script = "/usr/share/memcached/scripts/memcached-tool";
    ensure_apt("memcached", || Path::new(script).exists());
    ensure_apt("perl", || have("perl"));
    let tmp = tempfile::tempdir().unwrap();
    let (srv, addr) = server(&tmp.path().join("d"));
    let mut s = raw(srv.mc.unwrap());
    round_trip(
        &mut s,
        b"set one 7 0 3\r\nabc\r\nset sp%ce 0 100000 2\r\nxy\r\n",
        b"STORED\r\nSTORED\r\n",
    );
    let tool = |mode: &str| {
        let out = run(Command::new("perl").args([script, &addr, mode]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stats = tool("stats");
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().eq(["curr_items", "2"])),
        "{stats}"
    );
    let settings = tool("settings");
    assert!(
        settings
            .lines()
            .any(|l| l.split_whitespace().eq(["maxconns", "4096"])),
        "{settings}"
    );
    // `dump` lists the keys with `lru_crawler metadump all`, decodes them,
    // and reads each value back with `get`.
    let dump = tool("dump");
    assert!(dump.contains("add one 7 0 3\r\nabc\r\n"), "{dump:?}");
    assert!(dump.contains("add sp%ce 0 "), "{dump:?}");
    let keys = tool("keys");
    assert!(keys.contains("key=one exp=-1 "), "{keys}");
    assert!(keys.contains("key=sp%25ce exp="), "{keys}");
    // The default display reads `stats items` and `stats slabs`.
    let display = tool("display");
    assert!(display.lines().count() >= 2, "{display}");
}

#[test]
fn pymemcache_operators_view() {
    ensure_python("pymemcache", "pymemcache");
    let tmp = tempfile::tempdir().unwrap();
    let (_srv, addr) = server(&tmp.path().join("d"));
    let (_, port) = addr.rsplit_once(':').unwrap();
    let script = r#"
import sys
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])), connect_timeout=5, timeout=5)
def check(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)
check(c.version() == b"1.6.18", "version %r" % c.version())
check(c.set("k", b"v", noreply=False), "set")
check(c.get("k") == b"v", "get")
stats = c.stats()
for name in [b"cmd_set", b"get_hits", b"curr_items", b"limit_maxbytes", b"rusage_user"]:
    check(name in stats, "stats lacks %r" % name)
check(stats[b"curr_items"] == 1, "curr_items %r" % stats[b"curr_items"])
check(b"maxconns" in c.stats("settings"), "stats settings")
check(b"items:1:number" in c.stats("items"), "stats items")
check(b"active_slabs" in c.stats("slabs"), "stats slabs")
check(c.cache_memlimit(64) is True, "cache_memlimit")
check(c.stats()[b"limit_maxbytes"] == 64 << 20, "limit_maxbytes after cache_memlimit")
check(c.delete("k", noreply=False) is True, "delete")
check(c.delete("k", noreply=False) is False, "delete again")
print("ok")
"#;
    let out = run(Command::new("python3").args(["-c", script, port]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}
