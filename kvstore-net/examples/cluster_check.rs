//! Checks that kvstore's ketama continuum routes keys exactly as a running
//! twemproxy (nutcracker) does, and drives the cluster test.
//!
//! `scripts/cluster-test.sh` runs it against nutcracker in front of real
//! memcached servers and in front of `kvstore-server` processes. Each
//! subcommand does one step and exits non-zero when the step fails:
//!
//! ```text
//! cargo run --release -p kvstore-net --example cluster_check -- free-ports 4
//! cargo run --release -p kvstore-net --example cluster_check -- \
//!     write --proxy 127.0.0.1:22121 --prefix k: --count 10000
//! cargo run --release -p kvstore-net --example cluster_check -- \
//!     locate --server 127.0.0.1:11212:1 --server 127.0.0.1:11213:1 \
//!     --hash md5 --prefix k: --count 10000 --max-skew 0.2
//! ```
//!
//! Keys are `<prefix><i>`, every tenth with a non-ASCII byte pair in it
//! (`<prefix>é<i>`), so hashes that treat bytes as signed are exercised;
//! the value of a key is `value-of-<key>`.

use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kvstore_net::{Cluster, ClusterOptions, Continuum, KeyHash, ServerSpec};

/// Keys asked for in one multi-get.
const BATCH: usize = 100;

#[derive(Parser)]
#[command(about = "Cluster test steps: ketama routing checked against nutcracker")]
struct Args {
    #[command(subcommand)]
    step: Step,
}

/// Which keys a step works on.
#[derive(clap::Args, Clone)]
struct KeyRange {
    /// Prefix of every key.
    #[arg(long)]
    prefix: String,
    /// Number of keys.
    #[arg(long)]
    count: usize,
}

/// The servers behind the proxy, in the proxy's order.
#[derive(clap::Args, Clone)]
struct Servers {
    /// A server as in nutcracker's `servers:` list: `host:port:weight [name]`.
    #[arg(long = "server", required = true)]
    servers: Vec<ServerSpec>,
    /// The proxy's `hash:` setting.
    #[arg(long, default_value = "md5")]
    hash: KeyHash,
    /// Index (0-based) of a server that is down and ejected by the proxy.
    #[arg(long = "dead")]
    dead: Vec<usize>,
}

#[derive(Subcommand)]
enum Step {
    /// Prints N currently free loopback TCP ports, one a line.
    FreePorts { n: usize },
    /// Waits until ADDR accepts TCP connections.
    Wait {
        addr: String,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Stores every key through the proxy.
    Write {
        #[arg(long)]
        proxy: String,
        #[command(flatten)]
        keys: KeyRange,
    },
    /// Asks every live server directly which keys it holds and compares
    /// with the continuum's prediction; prints each server's share.
    Locate {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        keys: KeyRange,
        /// Fail when a live server's share is off even by more than this.
        #[arg(long)]
        max_skew: Option<f64>,
    },
    /// Reads keys back through the proxy and checks their values; with
    /// `--dead`, only the keys the full continuum puts on live servers.
    Read {
        #[arg(long)]
        proxy: String,
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        keys: KeyRange,
        /// Only the keys the full continuum puts on this server.
        #[arg(long)]
        only: Option<usize>,
        /// Try again until this many milliseconds have passed.
        #[arg(long, default_value_t = 0)]
        retry_ms: u64,
    },
    /// Reads every key straight from the servers with kvstore's Cluster
    /// client. With `--dead`, the client must eject the dead servers (their
    /// keys then read as missing from their stand-ins) and read all others.
    ClusterRead {
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        keys: KeyRange,
    },
    /// Waits until the proxy has ejected the dead servers: a read of a key
    /// of theirs stops failing (it then goes to the next live server).
    AwaitEjection {
        #[arg(long)]
        proxy: String,
        #[command(flatten)]
        servers: Servers,
        #[command(flatten)]
        keys: KeyRange,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args.step) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(step: Step) -> Result<(), String> {
    match step {
        Step::FreePorts { n } => free_ports(n),
        Step::Wait { addr, timeout_ms } => wait(&addr, Duration::from_millis(timeout_ms)),
        Step::Write { proxy, keys } => write(&proxy, &keys),
        Step::Locate {
            servers,
            keys,
            max_skew,
        } => locate(&servers, &keys, max_skew),
        Step::Read {
            proxy,
            servers,
            keys,
            only,
            retry_ms,
        } => {
            let deadline = Instant::now() + Duration::from_millis(retry_ms);
            let mut tries = 1;
            loop {
                match read(&proxy, &servers, &keys, only) {
                    Err(e) if Instant::now() < deadline => {
                        tries += 1;
                        if tries % 25 == 0 {
                            eprintln!("  still failing after {tries} tries: {e}");
                        }
                        std::thread::sleep(Duration::from_millis(40));
                    }
                    other => break other,
                }
            }
        }
        Step::ClusterRead { servers, keys } => cluster_read(&servers, &keys),
        Step::AwaitEjection {
            proxy,
            servers,
            keys,
            timeout_ms,
        } => await_ejection(&proxy, &servers, &keys, Duration::from_millis(timeout_ms)),
    }
}

fn key(prefix: &str, i: usize) -> Vec<u8> {
    if i % 10 == 0 {
        format!("{prefix}é{i}").into_bytes()
    } else {
        format!("{prefix}{i}").into_bytes()
    }
}

fn keys(range: &KeyRange) -> Vec<Vec<u8>> {
    (0..range.count).map(|i| key(&range.prefix, i)).collect()
}

fn value_of(key: &[u8]) -> Vec<u8> {
    [b"value-of-".as_slice(), key].concat()
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn free_ports(n: usize) -> Result<(), String> {
    // All bound at once so they are distinct; released on return.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    for listener in &listeners {
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        println!("{port}");
    }
    Ok(())
}

fn wait(addr: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{addr} not accepting after {timeout:?}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn write(proxy: &str, range: &KeyRange) -> Result<(), String> {
    let started = Instant::now();
    let mut conn = mc::Conn::connect(proxy)?;
    let all = keys(range);
    for batch in all.chunks(BATCH) {
        conn.set_many(batch.iter().map(|key| (key.as_slice(), value_of(key))))?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} keys through {proxy} in {secs:.2} s ({:.0} sets/s)",
        all.len(),
        all.len() as f64 / secs
    );
    Ok(())
}

/// The continuum with every server live, and the one without the dead.
fn continua(servers: &Servers) -> Result<(Continuum, Continuum, Vec<bool>), String> {
    let nodes: Vec<_> = servers.servers.iter().map(ServerSpec::node).collect();
    let mut live = vec![true; nodes.len()];
    for &dead in &servers.dead {
        *live
            .get_mut(dead)
            .ok_or_else(|| format!("--dead {dead}: there is no server {dead}"))? = false;
    }
    let full = Continuum::new(&nodes).map_err(|e| e.to_string())?;
    let alive = Continuum::with_live(&nodes, &live).map_err(|e| e.to_string())?;
    Ok((full, alive, live))
}

fn locate(servers: &Servers, range: &KeyRange, max_skew: Option<f64>) -> Result<(), String> {
    let (_, continuum, live) = continua(servers)?;
    let all = keys(range);
    let mut holders: HashMap<&[u8], Vec<usize>> = HashMap::new();
    let mut held = vec![0usize; servers.servers.len()];
    for (index, spec) in servers.servers.iter().enumerate() {
        if !live[index] {
            continue;
        }
        let mut conn = mc::Conn::connect(&spec.addr())?;
        for batch in all.chunks(BATCH) {
            let found = conn.get_many(batch)?;
            for key in batch {
                if let Some(value) = found.get(key) {
                    if *value != value_of(key) {
                        return Err(format!("{} holds a wrong value for {}", spec, show(key)));
                    }
                    holders.entry(key).or_default().push(index);
                    held[index] += 1;
                }
            }
        }
    }
    let mut predicted = vec![0usize; servers.servers.len()];
    let mut agree = 0;
    let mut problems = Vec::new();
    for key in &all {
        let expected = continuum
            .server_for(key, servers.hash)
            .ok_or("no live server")?;
        predicted[expected] += 1;
        match holders.get(key.as_slice()).map(Vec::as_slice) {
            Some([only]) if *only == expected => agree += 1,
            other => problems.push(format!(
                "{}: continuum says server {expected}, servers holding it: {other:?}",
                show(key)
            )),
        }
    }
    let live_count = live.iter().filter(|&&up| up).count();
    let even = all.len() as f64 / live_count as f64;
    println!(
        "hash {}: {agree}/{} keys on the server the continuum predicts",
        servers.hash,
        all.len()
    );
    let mut worst: f64 = 0.0;
    for (index, spec) in servers.servers.iter().enumerate() {
        if !live[index] {
            println!("  server {index} {spec}: down");
            continue;
        }
        let skew = held[index] as f64 / even - 1.0;
        worst = worst.max(skew.abs());
        println!(
            "  server {index} {spec}: holds {} keys, predicted {}, {:+.1}% of even",
            held[index],
            predicted[index],
            skew * 100.0
        );
    }
    if !problems.is_empty() {
        for problem in problems.iter().take(10) {
            eprintln!("  mismatch: {problem}");
        }
        return Err(format!(
            "{} of {} keys are not where the continuum puts them",
            problems.len(),
            all.len()
        ));
    }
    if let Some(max) = max_skew {
        if worst > max {
            return Err(format!(
                "a server's share is {:.1}% off even, over the {:.0}% allowed",
                worst * 100.0,
                max * 100.0
            ));
        }
        println!(
            "every share within {:.0}% of even (worst {:.1}%)",
            max * 100.0,
            worst * 100.0
        );
    }
    Ok(())
}

fn read(
    proxy: &str,
    servers: &Servers,
    range: &KeyRange,
    only: Option<usize>,
) -> Result<(), String> {
    let (full, _, live) = continua(servers)?;
    let wanted: Vec<Vec<u8>> = keys(range)
        .into_iter()
        .filter(|key| {
            full.server_for(key, servers.hash)
                .is_some_and(|s| live[s] && only.map_or(true, |only| s == only))
        })
        .collect();
    let started = Instant::now();
    let mut conn = mc::Conn::connect(proxy)?;
    let mut good = 0;
    for batch in wanted.chunks(BATCH) {
        let found = conn.get_many(batch)?;
        for key in batch {
            match found.get(key) {
                Some(value) if *value == value_of(key) => good += 1,
                Some(_) => return Err(format!("wrong value for {} through {proxy}", show(key))),
                None => return Err(format!("{} missing through {proxy}", show(key))),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let which = match (only, servers.dead.is_empty()) {
        (Some(only), _) => format!(" (all those of server {only}: {})", wanted.len()),
        (None, false) => format!(" (all those on live servers: {})", wanted.len()),
        (None, true) => String::new(),
    };
    println!(
        "read {good}/{} keys back through {proxy}{which} in {secs:.2} s",
        range.count
    );
    Ok(())
}

fn cluster_read(servers: &Servers, range: &KeyRange) -> Result<(), String> {
    let (full, _, live) = continua(servers)?;
    let options = ClusterOptions::default()
        .hash(servers.hash)
        .failure_limit(1)
        .retry_interval(Duration::from_secs(600));
    let mut cluster =
        Cluster::connect_with(&servers.servers, options).map_err(|e| e.to_string())?;
    let all = keys(range);
    let started = Instant::now();
    let (mut good, mut failed_over) = (0, 0);
    for batch in all.chunks(BATCH) {
        let values = cluster.get_many(batch).map_err(|e| e.to_string())?;
        for (key, got) in batch.iter().zip(values) {
            let server = full.server_for(key, servers.hash).ok_or("no server")?;
            match got {
                Some(value) if live[server] && value == value_of(key) => good += 1,
                None if !live[server] => failed_over += 1,
                Some(_) => return Err(format!("wrong value for {} through Cluster", show(key))),
                None => return Err(format!("{} missing through Cluster", show(key))),
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ejected = cluster.ejected();
    if ejected != servers.dead {
        return Err(format!(
            "Cluster ejected servers {ejected:?}, expected {:?}",
            servers.dead
        ));
    }
    println!(
        "read {good}/{} keys through kvstore's Cluster client in {secs:.2} s{}",
        all.len(),
        if ejected.is_empty() {
            String::new()
        } else {
            format!("; it ejected server(s) {ejected:?}, whose {failed_over} keys failed over")
        }
    );
    Ok(())
}

fn await_ejection(
    proxy: &str,
    servers: &Servers,
    range: &KeyRange,
    timeout: Duration,
) -> Result<(), String> {
    let (full, _, live) = continua(servers)?;
    let probe = keys(range)
        .into_iter()
        .find(|key| full.server_for(key, servers.hash).is_some_and(|s| !live[s]))
        .ok_or("no key of a dead server to probe with")?;
    let started = Instant::now();
    let mut failures = 0;
    loop {
        let outcome = mc::Conn::connect(proxy).and_then(|mut conn| conn.get_many(&[&probe]));
        match outcome {
            Ok(_) => {
                println!(
                    "proxy ejected the dead server after {failures} failed request(s), {:.0} ms",
                    started.elapsed().as_secs_f64() * 1000.0
                );
                return Ok(());
            }
            Err(e) if started.elapsed() >= timeout => {
                return Err(format!("proxy still failing after {timeout:?}: {e}"))
            }
            Err(_) => {
                failures += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The few memcached-dialect requests these steps need, over one
/// connection, pipelined per batch.
mod mc {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    pub struct Conn {
        addr: String,
        reader: BufReader<TcpStream>,
        writer: TcpStream,
    }

    impl Conn {
        pub fn connect(addr: &str) -> Result<Conn, String> {
            let stream =
                TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let timeout = Some(Duration::from_secs(10));
            let setup = stream
                .set_read_timeout(timeout)
                .and_then(|()| stream.set_write_timeout(timeout))
                .and_then(|()| stream.set_nodelay(true))
                .and_then(|()| stream.try_clone());
            let writer = setup.map_err(|e| format!("cannot set up {addr}: {e}"))?;
            Ok(Conn {
                addr: addr.to_string(),
                reader: BufReader::new(stream),
                writer,
            })
        }

        fn line(&mut self) -> Result<String, String> {
            let mut line = Vec::new();
            let n = self
                .reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("reading from {}: {e}", self.addr))?;
            if n == 0 {
                return Err(format!("{} closed the connection", self.addr));
            }
            Ok(String::from_utf8_lossy(&line).trim_end().to_string())
        }

        fn send(&mut self, request: &[u8]) -> Result<(), String> {
            self.writer
                .write_all(request)
                .map_err(|e| format!("writing to {}: {e}", self.addr))
        }

        pub fn set_many<'a>(
            &mut self,
            items: impl Iterator<Item = (&'a [u8], Vec<u8>)>,
        ) -> Result<(), String> {
            let mut request = Vec::new();
            let mut count = 0;
            for (key, value) in items {
                request.extend_from_slice(b"set ");
                request.extend_from_slice(key);
                request.extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
                request.extend_from_slice(&value);
                request.extend_from_slice(b"\r\n");
                count += 1;
            }
            self.send(&request)?;
            for _ in 0..count {
                let reply = self.line()?;
                if reply != "STORED" {
                    return Err(format!("set through {} answered {reply:?}", self.addr));
                }
            }
            Ok(())
        }

        pub fn get_many<K: AsRef<[u8]>>(
            &mut self,
            keys: &[K],
        ) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
            let mut request = b"get".to_vec();
            for key in keys {
                request.push(b' ');
                request.extend_from_slice(key.as_ref());
            }
            request.extend_from_slice(b"\r\n");
            self.send(&request)?;
            let mut found = HashMap::new();
            loop {
                let mut header = Vec::new();
                self.reader
                    .read_until(b'\n', &mut header)
                    .map_err(|e| format!("reading from {}: {e}", self.addr))?;
                if header.is_empty() {
                    return Err(format!("{} closed the connection", self.addr));
                }
                if header == b"END\r\n" {
                    return Ok(found);
                }
                let words: Vec<&[u8]> = header
                    .trim_ascii_end()
                    .split(|&b| b == b' ')
                    .filter(|w| !w.is_empty())
                    .collect();
                let (key, bytes) = match words.as_slice() {
                    [b"VALUE", key, _flags, bytes, ..] => (key.to_vec(), *bytes),
                    _ => {
                        return Err(format!(
                            "get through {} answered {:?}",
                            self.addr,
                            String::from_utf8_lossy(&header)
                        ))
                    }
                };
                let bytes: usize = std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|b| b.parse().ok())
                    .ok_or_else(|| format!("bad VALUE line from {}", self.addr))?;
                let mut data = vec![0; bytes + 2];
                self.reader
                    .read_exact(&mut data)
                    .map_err(|e| format!("reading from {}: {e}", self.addr))?;
                data.truncate(bytes);
                found.insert(key, data);
            }
        }
    }
}
