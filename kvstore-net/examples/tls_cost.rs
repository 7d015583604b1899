//! What TLS costs: the same load against the same server, over plain TCP
//! and over TLS, side by side in one run.
//!
//! Starts one in-process server per round (a throwaway CA made with rcgen
//! for the TLS one), runs `--clients` memcached-dialect clients for
//! `--seconds`, each doing 90% `get` and 10% `set` of 100-byte values over
//! 1,000 keys, and alternates plain and TLS for `--rounds` rounds. Prints
//! each round and the medians, and the TLS/plain ratio.
//!
//! ```text
//! cargo run --release -p kvstore-net --example tls_cost -- --clients 16 --seconds 5 --rounds 3
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvstore_core::{Durability, Options, Store};
use kvstore_net::tls::{TlsAcceptor, TlsConnector, TlsFiles};
use kvstore_net::{ConnectOptions, McClient, Server, ServerConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Args {
    clients: usize,
    seconds: u64,
    rounds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        clients: 16,
        seconds: 5,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--clients" => args.clients = number(&value)? as usize,
            "--seconds" => args.seconds = number(&value)?,
            "--rounds" => args.rounds = number(&value)? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// A CA and a server certificate for 127.0.0.1 in `dir`; returns the CA
/// file and the server's files.
fn make_pki(dir: &Path) -> Result<(std::path::PathBuf, TlsFiles), Box<dyn std::error::Error>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])?.signed_by(&key, &ca)?;
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        client_ca: None,
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem())?;
    Ok((ca_file, files))
}

/// One round: a fresh server, `clients` threads for `seconds`; ops/s.
fn round(args: &Args, tls: Option<(&TlsFiles, &Path)>) -> Result<f64, Box<dyn std::error::Error>> {
    let data = tempfile::tempdir()?;
    let store = Arc::new(Store::open_with(
        data.path(),
        Options::new().durability(Durability::Never),
    )?);
    let mut config = ServerConfig {
        seed_port: None,
        memcached_port: Some(0),
        ..ServerConfig::default()
    };
    let mut connect = ConnectOptions::default();
    if let Some((files, ca)) = tls {
        config.tls = Some(Arc::new(TlsAcceptor::new(files.clone())?));
        connect = connect.tls(TlsConnector::new(ca, None)?, "127.0.0.1");
    }
    let server = Server::start(store, config)?;
    let addr = server
        .memcached_addr()
        .ok_or("the server has no memcached port")?;
    let value = vec![b'v'; 100];
    {
        let mut c = McClient::connect_with(addr, &connect)?;
        for k in 0..1000 {
            c.set(format!("key:{k}"), &value, 0, 0)?;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..args.clients {
        let mut c = McClient::connect_with(addr, &connect)?;
        let (stop, ops, value) = (Arc::clone(&stop), Arc::clone(&ops), value.clone());
        threads.push(std::thread::spawn(move || -> kvstore_net::Result<()> {
            let mut i = t as u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("key:{}", (i * 7919) % 1000);
                if i.is_multiple_of(10) {
                    c.set(&key, &value, 0, 0)?;
                } else {
                    c.gets(&key)?;
                }
                ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        }));
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        t.join().map_err(|_| "a client thread panicked")??;
    }
    server.shutdown()?;
    Ok(ops.load(Ordering::Relaxed) as f64 / elapsed)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let certs = tempfile::tempdir()?;
    let (ca, files) = make_pki(certs.path())?;
    let (mut plain, mut tls) = (Vec::new(), Vec::new());
    for r in 1..=args.rounds.max(1) {
        let p = round(&args, None)?;
        let t = round(&args, Some((&files, &ca)))?;
        println!("round {r}: plain {p:.0} ops/s, tls {t:.0} ops/s");
        plain.push(p);
        tls.push(t);
    }
    let (p, t) = (median(plain), median(tls));
    println!(
        "median: plain {p:.0} ops/s, tls {t:.0} ops/s, tls/plain {:.2} ({} clients, 90% get / 10% set, 100 B)",
        t / p,
        args.clients
    );
    Ok(())
}
