//! The operators' commands of the memcached dialect on the wire: `stats`
//! and its groups in memcached's line format, the key dumps (`stats
//! cachedump`, `lru_crawler metadump`), `cache_memlimit`, `shutdown`,
//! `verbosity`, and a scrape as the Prometheus memcached_exporter does it.

use crate::common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

use common::{expect, line, raw, round_trip, server_command, spawn, start, DEADLINE};

/// Sends `request` and reads `STAT <name> <value>` lines up to `END`,
/// checking each line's format on the way.
fn stat_lines(s: &mut TcpStream, request: &[u8]) -> Vec<(String, String)> {
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    loop {
        let l = line(s);
        let body = l.strip_suffix("\r\n").expect("lines end with CRLF");
        if body == "END" {
            return out;
        }
        let rest = body
            .strip_prefix("STAT ")
            .unwrap_or_else(|| panic!("not a STAT line: {body:?}"));
        let parts: Vec<&str> = rest.split(' ').collect();
        assert_eq!(
            parts.len(),
            2,
            "STAT line of more than two tokens: {body:?}"
        );
        assert!(!parts[1].is_empty(), "empty value: {body:?}");
        out.push((parts[0].to_string(), parts[1].to_string()));
    }
}

fn stat_map(s: &mut TcpStream, request: &[u8]) -> HashMap<String, String> {
    stat_lines(s, request).into_iter().collect()
}

#[test]
fn stats_groups_in_memcached_format() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(&mut s, b"set a 5 0 3\r\nabc\r\n", b"STORED\r\n");
    round_trip(&mut s, b"get a nope\r\n", b"VALUE a 5 3\r\nabc\r\nEND\r\n");
    round_trip(&mut s, b"gets a\r\n", b"VALUE a 5 3 ");
    let cas: u64 = line(&mut s).trim().parse().unwrap();
    expect(&mut s, b"abc\r\nEND\r\n");
    round_trip(
        &mut s,
        format!("cas a 0 0 1 {}\r\nx\r\n", cas + 1000).as_bytes(),
        b"EXISTS\r\n",
    );
    round_trip(
        &mut s,
        format!("cas a 0 0 1 {cas}\r\nx\r\n").as_bytes(),
        b"STORED\r\n",
    );
    round_trip(&mut s, b"cas zz 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n");

    let general = stat_map(&mut s, b"stats\r\n");
    for (name, want) in [
        ("cmd_get", "3"),
        ("get_hits", "2"),
        ("get_misses", "1"),
        ("cmd_set", "4"),
        ("cas_hits", "1"),
        ("cas_badval", "1"),
        ("cas_misses", "1"),
        ("curr_items", "1"),
        ("total_items", "2"),
        ("evictions", "0"),
        ("accepting_conns", "1"),
        ("store_too_large", "0"),
        ("version", "1.6.18"),
    ] {
        assert_eq!(general.get(name).map(String::as_str), Some(want), "{name}");
    }
    for name in [
        "get_expired",
        "get_flushed",
        "bytes",
        "limit_maxbytes",
        "threads",
        "idle_kicks",
        "rusage_user",
        "rusage_system",
        "kvstore_version",
    ] {
        assert!(general.contains_key(name), "stats lacks {name}");
    }

    let settings = stat_map(&mut s, b"stats settings\r\n");
    assert_eq!(settings["maxconns"], "4096");
    assert_eq!(settings["tcpport"], srv.mc.port().to_string());
    assert_eq!(settings["item_size_max"], (1 << 20).to_string());
    assert_eq!(settings["binding_protocol"], "auto-negotiate");
    assert_eq!(settings["shutdown_command"], "no");

    let items = stat_map(&mut s, b"stats items\r\n");
    assert_eq!(items["items:1:number"], "1");
    assert_eq!(items["items:1:evicted"], "0");
    let slabs = stat_map(&mut s, b"stats slabs\r\n");
    assert_eq!(slabs["active_slabs"], "1");
    assert_eq!(slabs["1:used_chunks"], "1");
    assert_eq!(
        stat_lines(&mut s, b"stats sizes\r\n"),
        [("sizes_status".to_string(), "disabled".to_string())]
    );
    let conns = stat_map(&mut s, b"stats conns\r\n");
    let me = format!("tcp:{}", s.local_addr().unwrap());
    assert!(conns.values().any(|v| *v == me), "{conns:?} lacks {me}");
    assert!(conns.values().any(|v| v == "conn_listening"));

    // Per-prefix counts, byte for byte as memcached 1.6.18.
    round_trip(
        &mut s,
        b"stats detail on\r\nset a:b 0 0 1\r\nx\r\nget a:b\r\nget a:c\r\ndelete a:c\r\n\
          stats detail dump\r\nstats detail off\r\nstats detail dump\r\nstats detail\r\n",
        b"OK\r\nSTORED\r\nVALUE a:b 0 1\r\nx\r\nEND\r\nEND\r\nNOT_FOUND\r\n\
          PREFIX a get 2 hit 1 set 1 del 1\r\nEND\r\nOK\r\nEND\r\n\
          CLIENT_ERROR usage: stats detail on|off|dump\r\n",
    );

    round_trip(&mut s, b"stats reset\r\n", b"RESET\r\n");
    let general = stat_map(&mut s, b"stats\r\n");
    assert_eq!(general["cmd_get"], "0");
    assert_eq!(general["cas_badval"], "0");
    assert_eq!(general["curr_items"], "2", "reset keeps the items");
    round_trip(&mut s, b"stats bogus\r\n", b"ERROR\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn key_dumps_list_every_key_once() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    // More keys than one scan chunk holds, so the dump crosses chunks.
    let n = 9_000;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend_from_slice(format!("set k/{i} {i} 0 1 noreply\r\nv\r\n").as_bytes());
    }
    batch.extend_from_slice(b"set odd%key:1 0 100000 2\r\nvv\r\n");
    s.write_all(&batch).unwrap();
    expect(&mut s, b"STORED\r\n");

    s.write_all(b"lru_crawler metadump all\r\n").unwrap();
    let mut seen = std::collections::HashSet::new();
    loop {
        let l = line(&mut s);
        if l == "END\r\n" {
            break;
        }
        // One item per line, ended by a bare LF as memcached does.
        let body = l.strip_suffix('\n').unwrap();
        assert!(!body.ends_with('\r'), "{l:?}");
        let fields: Vec<&str> = body.split(' ').collect();
        assert_eq!(fields.len(), 7, "{body}");
        let key = fields[0].strip_prefix("key=").unwrap().to_string();
        assert!(fields[1].starts_with("exp="));
        assert!(fields[3].starts_with("cas="));
        assert_eq!(fields[5], "cls=1");
        if key == "odd%25key%3A1" {
            let exp: u64 = fields[1][4..].parse().unwrap();
            assert!(exp > 1_000_000_000, "absolute expiry {exp}");
        } else {
            assert_eq!(fields[1], "exp=-1");
        }
        assert!(seen.insert(key.clone()), "{key} listed twice");
    }
    assert_eq!(seen.len(), n + 1);
    assert!(seen.contains("k%2F0") && seen.contains("odd%25key%3A1"));

    s.write_all(b"stats cachedump 1 0\r\n").unwrap();
    let mut count = 0;
    loop {
        let l = line(&mut s);
        if l == "END\r\n" {
            break;
        }
        assert!(l.starts_with("ITEM ") && l.ends_with(" s]\r\n"), "{l:?}");
        count += 1;
    }
    assert_eq!(count, n + 1);
    s.write_all(b"stats cachedump 1 3\r\n").unwrap();
    for _ in 0..3 {
        assert!(line(&mut s).starts_with("ITEM "));
    }
    expect(&mut s, b"END\r\n");
    round_trip(
        &mut s,
        b"stats cachedump 2 0\r\nstats cachedump 0 0\r\nstats cachedump 1\r\n\
          lru_crawler metadump 2\r\nlru_crawler metadump\r\n",
        b"END\r\nCLIENT_ERROR Illegal slab id\r\nCLIENT_ERROR bad command line\r\nEND\r\nERROR\r\n",
    );
    srv.handle.shutdown().unwrap();
}

#[test]
fn cache_memlimit_verbosity_and_refused_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(
        &mut s,
        b"cache_memlimit 100\r\ncache_memlimit 7\r\ncache_memlimit 9 noreply\r\ncache_memlimit\r\n",
        b"OK\r\nMEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\nERROR\r\n",
    );
    assert_eq!(
        stat_map(&mut s, b"stats\r\n")["limit_maxbytes"],
        (9u64 << 20).to_string()
    );
    assert_eq!(
        stat_map(&mut s, b"stats settings\r\n")["maxbytes"],
        (9u64 << 20).to_string()
    );
    round_trip(
        &mut s,
        b"verbosity 2\r\nverbosity 0 noreply\r\nverbosity x\r\n",
        b"OK\r\nCLIENT_ERROR bad command line format\r\n",
    );
    round_trip(&mut s, b"shutdown\r\n", b"ERROR: shutdown not enabled\r\n");
    round_trip(&mut s, b"version\r\n", b"VERSION 1.6.18\r\n");
    srv.handle.shutdown().unwrap();
}

#[test]
fn shutdown_stops_a_server_started_with_it_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = server_command(env!("CARGO_BIN_EXE_kvstore-server"), &tmp.path().join("d"));
    cmd.arg("--enable-shutdown");
    let mut srv = spawn(cmd);
    let mut s = raw(srv.mc.unwrap());
    assert_eq!(
        stat_map(&mut s, b"stats settings\r\n")["shutdown_command"],
        "yes"
    );
    round_trip(&mut s, b"set k 0 0 1\r\nv\r\n", b"STORED\r\n");
    s.write_all(b"shutdown\r\n").unwrap();
    assert_eq!(common::read_to_eof(&mut s), b"");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = srv.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "server still running after shutdown"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

/// What a Prometheus memcached_exporter scrape reads: `stats` and `stats
/// settings` (an unparsable value marks the server down), `stats items`
/// and `stats slabs` keyed by class number.
#[test]
fn exporter_style_scrape() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path());
    let mut s = raw(srv.mc);
    round_trip(
        &mut s,
        b"set a 0 0 1\r\nx\r\nget a\r\n",
        b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n",
    );
    let stats = stat_map(&mut s, b"stats\r\n");
    // Parsed as numbers: a failure here is the exporter's memcached_up 0.
    for name in [
        "uptime",
        "time",
        "cmd_set",
        "cmd_flush",
        "cas_misses",
        "cas_hits",
        "cas_badval",
        "bytes",
        "limit_maxbytes",
        "curr_items",
        "total_items",
        "bytes_read",
        "bytes_written",
        "curr_connections",
        "total_connections",
        "rejected_connections",
        "evictions",
        "reclaimed",
        "store_too_large",
        "store_no_memory",
        "accepting_conns",
        "conn_yields",
    ] {
        let v = stats
            .get(name)
            .unwrap_or_else(|| panic!("stats lacks {name}"));
        assert!(v.parse::<f64>().is_ok(), "{name} = {v:?}");
    }
    for op in ["get", "delete", "incr", "decr", "cas", "touch"] {
        for what in ["hits", "misses"] {
            let name = format!("{op}_{what}");
            assert!(stats[&name].parse::<u64>().is_ok(), "{name}");
        }
    }
    // rusage as `<sec>.<usec>`, six digits after the point.
    for name in ["rusage_user", "rusage_system"] {
        let (sec, usec) = stats[name].split_once('.').unwrap();
        assert!(sec.parse::<u64>().is_ok() && usec.len() == 6 && usec.parse::<u32>().is_ok());
    }
    let settings = stat_map(&mut s, b"stats settings\r\n");
    assert!(settings["maxconns"].parse::<f64>().is_ok());
    // The exporter reads the LRU crawler fields only when it is on.
    assert_eq!(settings["lru_crawler"], "no");
    for (name, value) in stat_lines(&mut s, b"stats items\r\n") {
        let mut parts = name.split(':');
        assert_eq!(parts.next(), Some("items"));
        assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{name}");
        assert!(value.parse::<f64>().is_ok(), "{name} = {value}");
    }
    for (name, value) in stat_lines(&mut s, b"stats slabs\r\n") {
        if let Some((class, _)) = name.split_once(':') {
            assert!(class.parse::<u32>().is_ok(), "{name}");
        }
        assert!(value.parse::<f64>().is_ok(), "{name} = {value}");
    }
    srv.handle.shutdown().unwrap();
}

#[test]
fn idle_kicks_count_connections_closed_for_idleness() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = common::config();
    cfg.idle_timeout = Some(std::time::Duration::from_millis(200));
    let srv = common::start_with(tmp.path(), cfg);
    let mut idle = raw(srv.mc);
    assert_eq!(common::read_to_eof(&mut idle), b"");
    common::wait_for("the idle connection to be closed", || {
        srv.handle.connections() == 0
    });
    let mut s = raw(srv.mc);
    assert_eq!(stat_map(&mut s, b"stats\r\n")["idle_kicks"], "1");
    assert_eq!(
        stat_map(&mut s, b"stats settings\r\n")["idle_timeout"],
        "0",
        "idle_timeout is in whole seconds"
    );
    srv.handle.shutdown().unwrap();
}

/// `--max-pending-bytes` bounds the table of acknowledged changes not yet
/// applied to the value files; `stats` shows the bound and the bytes.
#[test]
fn stats_show_the_pending_table_and_its_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = server_command(env!("CARGO_BIN_EXE_kvstore-server"), &tmp.path().join("d"));
    cmd.args(["--durability", "periodic", "--max-pending-bytes", "1048576"]);
    let srv = spawn(cmd);
    let mut s = raw(srv.mc.unwrap());
    let stats = stat_map(&mut s, b"stats\r\n");
    assert_eq!(stats["limit_pending_bytes"], "1048576");
    assert_eq!(stats["pending_bytes"], "0");
    round_trip(&mut s, b"set k 0 0 5\r\nvalue\r\n", b"STORED\r\n");
    // Whether the set is still pending depends on when the flush ran;
    // the bytes are a number within the bound either way.
    let pending: u64 = stat_map(&mut s, b"stats\r\n")["pending_bytes"]
        .parse()
        .unwrap();
    assert!(pending <= 1_048_576, "pending_bytes {pending}");
    round_trip(&mut s, b"get k\r\n", b"VALUE k 0 5\r\nvalue\r\nEND\r\n");
}
