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
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kvstore_net::{Cluster, ClusterOptions, Continuum, KeyHash, McClient, ServerSpec};

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
    /// Prints, for each key, the index of the server the continuum gives
    /// it, a tab and the key, one a line.
    Route {
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
        Step::Route { servers, keys } => route(&servers, &keys),
        Step::AwaitEjection {
            proxy,
            servers,
            keys,
            timeout_ms,
        } => await_ejection(&proxy, &servers, &keys, Duration::from_millis(timeout_ms)),
    }
}

fn key(prefix: &str, i: usize) -> Vec<u8> {
    if i.is_multiple_of(10) {
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

fn connect(addr: &str) -> Result<McClient, String> {
    McClient::connect_timeout(addr, Duration::from_secs(10)).map_err(|e| e.to_string())
}

/// The values of the keys of `batch` that `client`'s server has.
fn get_map<K: AsRef<[u8]>>(
    client: &mut McClient,
    batch: &[K],
) -> Result<HashMap<Vec<u8>, Vec<u8>>, String> {
    let items = client
        .get_many(batch, false)
        .map_err(|e| format!("get from {}: {e}", client.peer()))?;
    Ok(items
        .into_iter()
        .map(|(key, item)| (key, item.value))
        .collect())
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
    let mut client = connect(proxy)?;
    let all = keys(range);
    for key in &all {
        client
            .set(key, value_of(key), 0, 0)
            .map_err(|e| format!("set {} through {proxy}: {e}", show(key)))?;
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
    let mut curr_items: Vec<Option<String>> = vec![None; servers.servers.len()];
    for (index, spec) in servers.servers.iter().enumerate() {
        if !live[index] {
            continue;
        }
        let mut client = connect(&spec.addr())?;
        curr_items[index] = client
            .stats()
            .map_err(|e| format!("stats of {spec}: {e}"))?
            .into_iter()
            .find(|(name, _)| name == "curr_items")
            .map(|(_, value)| value);
        for batch in all.chunks(BATCH) {
            let found = get_map(&mut client, batch)?;
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
            "  server {index} {spec}: holds {} keys, predicted {}, {:+.1}% of even (stats curr_items {})",
            held[index],
            predicted[index],
            skew * 100.0,
            curr_items[index].as_deref().unwrap_or("missing")
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
                .is_some_and(|s| live[s] && only.is_none_or(|only| s == only))
        })
        .collect();
    let started = Instant::now();
    let mut client = connect(proxy)?;
    let mut good = 0;
    for batch in wanted.chunks(BATCH) {
        let found = get_map(&mut client, batch)?;
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

fn route(servers: &Servers, range: &KeyRange) -> Result<(), String> {
    let (_, continuum, _) = continua(servers)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for key in keys(range) {
        let server = continuum
            .server_for(&key, servers.hash)
            .ok_or("no live server")?;
        let line = [format!("{server}\t").into_bytes(), key, b"\n".to_vec()].concat();
        out.write_all(&line).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
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
        let outcome = connect(proxy).and_then(|mut client| get_map(&mut client, &[&probe]));
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
