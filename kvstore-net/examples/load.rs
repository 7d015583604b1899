//! Connection load and slowloris test against a running `kvstore-server`.
//!
//! Holds `--idle` idle connections (alternating dialects), trickles
//! requests one byte at a time on `--slow` more connections (slow senders,
//! a slowloris), runs `--busy` clients doing set/get as fast as they can for
//! `--seconds`, and meanwhile announces oversize values (`set` of 1 GB,
//! streamed in part). Reports the busy clients' latency percentiles and the
//! server's peak RSS (VmHWM from /proc/PID/status, with `--pid`).
//!
//! ```text
//! kvstore-server --port 0 --memcached-port 0 --max-connections 12000 &
//! cargo run --release -p kvstore-net --example load -- \
//!     --seed 127.0.0.1:PORT --memcached 127.0.0.1:PORT --pid PID
//! ```
//! Exits non-zero when a connection is refused or a reply is wrong, and,
//! only when `--max-p99-ms` is given, when the busy p99 reaches it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use kvstore_net::{Client, McClient};

struct Args {
    seed: SocketAddr,
    memcached: SocketAddr,
    pid: Option<u32>,
    idle: usize,
    slow: usize,
    busy: usize,
    seconds: u64,
    /// Fail when the busy clients' p99 reaches this (off by default: a
    /// latency on a shared machine is a figure to report, not a pass/fail).
    max_p99_ms: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        seed: "127.0.0.1:7878".parse().map_err(|e| format!("{e}"))?,
        memcached: "127.0.0.1:11211".parse().map_err(|e| format!("{e}"))?,
        pid: None,
        idle: 10_000,
        slow: 1_000,
        busy: 64,
        seconds: 10,
        max_p99_ms: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value {val:?} for {flag}: {e}");
        match flag.as_str() {
            "--seed" => a.seed = val.parse().map_err(|e| bad(&e))?,
            "--memcached" => a.memcached = val.parse().map_err(|e| bad(&e))?,
            "--pid" => a.pid = Some(val.parse().map_err(|e| bad(&e))?),
            "--idle" => a.idle = val.parse().map_err(|e| bad(&e))?,
            "--slow" => a.slow = val.parse().map_err(|e| bad(&e))?,
            "--busy" => a.busy = val.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = val.parse().map_err(|e| bad(&e))?,
            "--max-p99-ms" => a.max_p99_ms = Some(val.parse().map_err(|e| bad(&e))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn raise_fd_limit() {
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open-file limit: {err}");
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn curr_connections(addr: SocketAddr) -> Result<u64, String> {
    let mut mc = McClient::connect(addr).map_err(|e| e.to_string())?;
    let stats = mc.stats().map_err(|e| e.to_string())?;
    stats
        .iter()
        .find(|(k, _)| k == "curr_connections")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| "no curr_connections in stats".to_string())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn run() -> Result<bool, String> {
    let args = parse_args()?;
    raise_fd_limit();
    let started = Instant::now();
    let hwm_before = args.pid.and_then(vm_hwm_kib);

    // 1. Idle connections.
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let addr = if i % 2 == 0 {
            args.seed
        } else {
            args.memcached
        };
        let s = TcpStream::connect(addr).map_err(|e| format!("idle connection {i}: {e}"))?;
        idle.push(s);
    }
    // 2. Slow senders: connected now, trickling later.
    let mut slow = Vec::with_capacity(args.slow);
    for i in 0..args.slow {
        let s = TcpStream::connect(args.seed).map_err(|e| format!("slow connection {i}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        slow.push(s);
    }
    let opened = Instant::now();
    // The server counts a connection when its thread starts: poll.
    let want = (args.idle + args.slow) as u64;
    let mut held = 0;
    while opened.elapsed() < Duration::from_secs(30) {
        held = curr_connections(args.memcached)?;
        if held > want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let held = held.saturating_sub(1); // the stats connection itself
    println!(
        "load: {} idle + {} slow connections opened in {:.1} s; server reports {held} held",
        args.idle,
        args.slow,
        opened.duration_since(started).as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    // Slowloris: one byte per connection per round.
    let slow_thread = {
        let stop = stop.clone();
        let failures = failures.clone();
        std::thread::spawn(move || {
            let mut requests: Vec<Vec<u8>> = (0..slow.len())
                .map(|i| format!("set slow{i} 5\r\nhello\r\n").into_bytes())
                .collect();
            let mut pos = vec![0usize; slow.len()];
            let mut bytes = 0u64;
            let mut completed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (i, s) in slow.iter_mut().enumerate() {
                    if pos[i] == requests[i].len() {
                        // Read the reply, start over.
                        let mut reply = [0u8; 8];
                        if s.read_exact(&mut reply).is_err() || &reply != b"STORED\r\n" {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        completed += 1;
                        pos[i] = 0;
                        requests[i] = format!("set slow{i} 5\r\nhello\r\n").into_bytes();
                    }
                    if s.write_all(&requests[i][pos[i]..pos[i] + 1]).is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    pos[i] += 1;
                    bytes += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (bytes, completed)
        })
    };
    // Oversize announcements: 1 GB values, 16 MiB streamed each, over and
    // over on fresh connections.
    let oversize_thread = {
        let stop = stop.clone();
        let (seed, mc) = (args.seed, args.memcached);
        std::thread::spawn(move || {
            let chunk = vec![b'o'; 1 << 20];
            let mut announced = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (addr, header) in [
                    (seed, &b"set huge 1000000000\r\n"[..]),
                    (mc, &b"set huge 0 0 1000000000\r\n"[..]),
                ] {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        continue;
                    };
                    if s.write_all(header).is_err() {
                        continue;
                    }
                    announced += 1;
                    for _ in 0..16 {
                        if stop.load(Ordering::Relaxed) || s.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
            }
            announced
        })
    };
    // Busy clients.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let busy: Vec<_> = (0..args.busy)
        .map(|t| {
            let latencies = latencies.clone();
            let failures = failures.clone();
            let addr = args.seed;
            std::thread::spawn(move || {
                let Ok(mut c) = Client::connect(addr) else {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut mine = Vec::with_capacity(100_000);
                let value = vec![b'v'; 100];
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("busy{t}-{}", i % 100);
                    let t0 = Instant::now();
                    let ok = if i.is_multiple_of(10) {
                        c.set(&key, &value).is_ok()
                    } else {
                        c.get(&key).is_ok()
                    };
                    mine.push(t0.elapsed().as_micros() as u64);
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                latencies.lock().extend(mine);
            })
        })
        .collect();
    for b in busy {
        b.join().map_err(|_| "a busy client panicked".to_string())?;
    }
    let held_during = curr_connections(args.memcached)?.saturating_sub(1);
    stop.store(true, Ordering::Relaxed);
    let (slow_bytes, slow_done) = slow_thread
        .join()
        .map_err(|_| "the slow sender panicked".to_string())?;
    let announced = oversize_thread
        .join()
        .map_err(|_| "the oversize thread panicked".to_string())?;
    // The idle connections are all still open (the server never dropped
    // them): a write + read on a sample works.
    let mut idle_ok = 0;
    for (i, s) in idle.iter_mut().enumerate().step_by(97) {
        let (req, want): (&[u8], &[u8]) = if i % 2 == 0 {
            (b"get nothing\r\n", b"VALUE nothing 0\r\n\r\nEND\r\n")
        } else {
            (b"get nothing\r\n", b"END\r\n")
        };
        let mut got = vec![0u8; want.len()];
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        if s.write_all(req).is_ok() && s.read_exact(&mut got).is_ok() && got == want {
            idle_ok += 1;
        } else {
            failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    let mut lat = latencies.lock().clone();
    lat.sort_unstable();
    let p50 = percentile(&lat, 0.50);
    let p99 = percentile(&lat, 0.99);
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    let hwm_after = args.pid.and_then(vm_hwm_kib);
    let failures = failures.load(Ordering::Relaxed);
    println!(
        "load: connections held {held_during} (idle {}, slow {}, busy {}); slow senders sent {slow_bytes} bytes one at a time, {slow_done} requests completed",
        args.idle, args.slow, args.busy
    );
    println!(
        "load: busy clients {} ops in {} s ({:.0} ops/s): p50 {p50:.3} ms, p99 {p99:.3} ms, max {max:.3} ms",
        lat.len(),
        args.seconds,
        lat.len() as f64 / args.seconds as f64
    );
    println!("load: oversize announcements {announced} (1 GB each, 16 MiB streamed); idle sample answered {idle_ok}");
    match (hwm_before, hwm_after) {
        (Some(b), Some(a)) => println!(
            "load: server peak RSS (VmHWM) {:.1} MiB (before the load {:.1} MiB)",
            a as f64 / 1024.0,
            b as f64 / 1024.0
        ),
        _ => println!("load: server peak RSS not measured (give --pid)"),
    }
    println!("load: failures {failures}");
    let p99_over = args.max_p99_ms.filter(|&max| p99 >= max);
    let ok = failures == 0 && p99_over.is_none() && held_during as usize >= args.idle + args.slow;
    if let Some(max) = p99_over {
        println!("load: FAIL: busy p99 {p99:.3} ms >= {max} ms");
    }
    if (held_during as usize) < args.idle + args.slow {
        println!("load: FAIL: only {held_during} connections held");
    }
    Ok(ok)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load: error: {e}");
            ExitCode::FAILURE
        }
    }
}
