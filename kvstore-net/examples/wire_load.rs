//! One load generator for kvstore-server's memcached dialect and for Redis,
//! so that both servers are measured by the same client code.
//!
//! One blocking thread per connection (TCP_NODELAY, one request in flight,
//! like memtier_benchmark or redis-benchmark with `-P 1`) sends sets and gets
//! of keys `key:<n>` (n zero-padded to 12 digits, as redis-benchmark's `-r`
//! writes them) drawn uniformly from `--keys`, for `--seconds`. `--prefill`
//! first sets every key once, spread over the connections; `--seconds 0`
//! then only prefills, and `--require-hits` tells a later run that every
//! key is there. Prints one line:
//!
//! ```text
//! ops/s 45123 p50_us 1234 p99_us 5678 errors 0 sets 405000 gets 46000 misses 0 seconds 10.00
//! ```
//!
//! ```text
//! kvstore-server --port 0 --memcached-port 11311 --durability periodic &
//! cargo run --release -p kvstore-net --example wire_load -- \
//!     --addr 127.0.0.1:11311 --protocol memcached --connections 64 \
//!     --seconds 10 --keys 100000 --value-bytes 100 --set-ratio 1.0 --prefill
//! redis-server --port 6380 --save "" --appendonly yes --appendfsync always &
//! cargo run --release -p kvstore-net --example wire_load -- \
//!     --addr 127.0.0.1:6380 --protocol resp --prefill
//! ```
//!
//! Every value holds its own key at the start, so a get that returns
//! another key's value is caught. A wrong reply (or a miss after
//! `--prefill` or with `--require-hits`: nothing here deletes) is an
//! error: it is printed (the first few), that
//! connection stops (its stream can no longer be trusted), and the program
//! exits non-zero after printing its line.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Digits of the key number: `key:` plus 12 digits, as redis-benchmark's
/// `-r` writes `__rand_int__`, so a prefill here covers its keys too.
const KEY_DIGITS: usize = 12;
const KEY_PREFIX: &[u8] = b"key:";
const KEY_BYTES: usize = KEY_PREFIX.len() + KEY_DIGITS;
/// A reply line longer than this without its CRLF is wrong: every reply
/// line this client expects is a few dozen bytes.
const MAX_LINE_BYTES: usize = 1024;
/// A value announced larger than this is wrong (both servers' limits are
/// far below), and its length cannot overflow an offset.
const MAX_VALUE_BYTES: usize = 1 << 30;
/// A server silent for this long fails the connection instead of hanging
/// the run.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Errors printed; the rest are only counted (one broken server would
/// otherwise print one line per connection).
const MAX_ERRORS_SHOWN: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Memcached,
    Resp,
}

#[derive(Clone, Debug)]
struct Args {
    addr: SocketAddr,
    protocol: Protocol,
    connections: usize,
    seconds: f64,
    keys: u64,
    value_bytes: usize,
    set_ratio: f64,
    prefill: bool,
    /// Every key was set before (by `--prefill` or an earlier run), so a
    /// miss is an error.
    require_hits: bool,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:11211".parse().map_err(|e| format!("{e}"))?,
        protocol: Protocol::Memcached,
        connections: 64,
        seconds: 10.0,
        keys: 100_000,
        value_bytes: 100,
        set_ratio: 1.0,
        prefill: false,
        require_hits: false,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--prefill" => {
                a.prefill = true;
                a.require_hits = true;
                continue;
            }
            "--require-hits" => {
                a.require_hits = true;
                continue;
            }
            _ => {}
        }
        let val = it
            .next()
            .ok_or_else(|| format!("flag {flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value {val:?} for {flag}: {e}");
        match flag.as_str() {
            "--addr" => {
                a.addr = val
                    .to_socket_addrs()
                    .map_err(|e| bad(&e))?
                    .next()
                    .ok_or_else(|| bad(&"no address"))?
            }
            "--protocol" => {
                a.protocol = match val.as_str() {
                    "memcached" => Protocol::Memcached,
                    "resp" => Protocol::Resp,
                    _ => return Err(bad(&"expected memcached or resp")),
                }
            }
            "--connections" => a.connections = val.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = val.parse().map_err(|e| bad(&e))?,
            "--keys" => a.keys = val.parse().map_err(|e| bad(&e))?,
            "--value-bytes" => a.value_bytes = val.parse().map_err(|e| bad(&e))?,
            "--set-ratio" => a.set_ratio = val.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = val.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if a.keys == 0 || a.keys > 10u64.pow(KEY_DIGITS as u32) {
        return Err(format!("--keys must be 1..=10^{KEY_DIGITS}"));
    }
    if !(0.0..=1.0).contains(&a.set_ratio) {
        return Err("--set-ratio must be within 0..=1".into());
    }
    if !(a.seconds >= 0.0 && a.seconds.is_finite()) {
        return Err("--seconds must be a finite number >= 0".into());
    }
    Ok(a)
}

/// xorshift64*: enough for spreading keys, one per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so neighbouring seeds start far apart;
        // never zero, which xorshift cannot leave.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (the modulo bias is below 1e-8 for n <= 10^12).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Writes `key:` and `n` zero-padded to [`KEY_DIGITS`] digits into `out`.
fn write_key(n: u64, out: &mut [u8; KEY_BYTES]) {
    out[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX);
    let mut n = n;
    for slot in out[KEY_PREFIX.len()..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The value stored under `key`: the key itself, then `x` up to `len`
/// bytes, so a value is never mistaken for another key's.
fn write_value(key: &[u8], value: &mut [u8]) {
    let n = key.len().min(value.len());
    value[..n].copy_from_slice(&key[..n]);
}

fn encode_set(protocol: Protocol, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match protocol {
        Protocol::Memcached => {
            out.extend_from_slice(b"set ");
            out.extend_from_slice(key);
            out.extend_from_slice(format!(" 0 0 {}\r\n", value.len()).as_bytes());
        }
        Protocol::Resp => {
            out.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n", key.len()).as_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(format!("\r\n${}\r\n", value.len()).as_bytes());
        }
    }
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn encode_get(protocol: Protocol, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    match protocol {
        Protocol::Memcached => out.extend_from_slice(b"get "),
        Protocol::Resp => {
            out.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n", key.len()).as_bytes())
        }
    }
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// What a reply parser makes of the bytes received so far.
#[derive(Debug, PartialEq)]
enum Parsed<T> {
    /// A whole reply: its meaning and how many bytes it took.
    Done(T, usize),
    /// A correct beginning; more bytes are needed.
    Incomplete,
    /// Not the reply this request can get.
    Wrong(String),
}

/// The first line of `buf` without its CRLF, and the bytes it takes.
fn line(buf: &[u8]) -> Parsed<&[u8]> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Parsed::Done(&buf[..i], i + 2),
        None if buf.len() > MAX_LINE_BYTES => {
            Parsed::Wrong(format!("no line end in {} bytes", buf.len()))
        }
        None => Parsed::Incomplete,
    }
}

fn show(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(120)];
    format!("{:?}", String::from_utf8_lossy(cut))
}

/// The reply to a set: `STORED` (memcached) or `+OK` (RESP).
fn parse_set_reply(protocol: Protocol, buf: &[u8]) -> Parsed<()> {
    let want: &[u8] = match protocol {
        Protocol::Memcached => b"STORED",
        Protocol::Resp => b"+OK",
    };
    match line(buf) {
        Parsed::Done(l, used) if l == want => Parsed::Done((), used),
        Parsed::Done(l, _) => Parsed::Wrong(format!("set got {}", show(l))),
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Wrong(e) => Parsed::Wrong(e),
    }
}

/// The reply to a get of `key`: the value's place in `buf`, or `None` for
/// a miss (memcached `END`, RESP `$-1`).
fn parse_get_reply(protocol: Protocol, key: &[u8], buf: &[u8]) -> Parsed<Option<Range<usize>>> {
    let (head, head_len) = match line(buf) {
        Parsed::Done(l, used) => (l, used),
        Parsed::Incomplete => return Parsed::Incomplete,
        Parsed::Wrong(e) => return Parsed::Wrong(e),
    };
    let wrong = || Parsed::Wrong(format!("get {} got {}", show(key), show(head)));
    let (len, trailer): (usize, &[u8]) = match protocol {
        Protocol::Memcached => {
            if head == b"END" {
                return Parsed::Done(None, head_len);
            }
            // VALUE <key> <flags> <bytes>
            let mut parts = head.split(|&b| b == b' ');
            let (Some(b"VALUE"), Some(k), Some(flags), Some(bytes), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return wrong();
            };
            let flags_ok = std::str::from_utf8(flags)
                .ok()
                .and_then(|f| f.parse::<u32>().ok())
                .is_some();
            let len = std::str::from_utf8(bytes)
                .ok()
                .and_then(|b| b.parse::<usize>().ok());
            match len {
                Some(len) if k == key && flags_ok => (len, b"\r\nEND\r\n"),
                _ => return wrong(),
            }
        }
        Protocol::Resp => {
            if head == b"$-1" {
                return Parsed::Done(None, head_len);
            }
            let len = head
                .strip_prefix(b"$")
                .and_then(|n| std::str::from_utf8(n).ok())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<usize>().ok());
            match len {
                Some(len) => (len, b"\r\n"),
                None => return wrong(),
            }
        }
    };
    if len > MAX_VALUE_BYTES {
        return wrong();
    }
    let data = head_len..head_len + len;
    let total = data.end + trailer.len();
    let got = &buf[data.end.min(buf.len())..total.min(buf.len())];
    if got != &trailer[..got.len()] {
        return Parsed::Wrong(format!(
            "get {}: the value is not followed by {}",
            show(key),
            show(trailer)
        ));
    }
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    Parsed::Done(Some(data), total)
}

/// One connection with one request in flight.
struct Conn {
    stream: TcpStream,
    protocol: Protocol,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
    req: Vec<u8>,
}

impl Conn {
    fn connect(addr: SocketAddr, protocol: Protocol) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| format!("read timeout: {e}"))?;
        Ok(Conn {
            stream,
            protocol,
            buf: Vec::with_capacity(4096),
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            req: Vec::with_capacity(4096),
        })
    }

    /// Sends `self.req` and reads until `parse` accepts a whole reply,
    /// which must be everything the server sent.
    fn round_trip<T>(&mut self, parse: impl Fn(&[u8]) -> Parsed<T>) -> Result<T, String> {
        self.buf.clear();
        self.stream
            .write_all(&self.req)
            .map_err(|e| format!("send: {e}"))?;
        loop {
            match parse(&self.buf) {
                Parsed::Done(v, used) if used == self.buf.len() => return Ok(v),
                Parsed::Done(_, used) => {
                    return Err(format!(
                        "{} unexpected bytes after the reply: {}",
                        self.buf.len() - used,
                        show(&self.buf[used..])
                    ))
                }
                Parsed::Wrong(e) => return Err(e),
                Parsed::Incomplete => {}
            }
            let n = self
                .stream
                .read(&mut self.scratch)
                .map_err(|e| format!("receive: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        encode_set(self.protocol, key, value, &mut self.req);
        let protocol = self.protocol;
        self.round_trip(|b| parse_set_reply(protocol, b))
    }

    /// Gets `key` and compares the value with `want`; true on a hit.
    fn get(&mut self, key: &[u8], want: &[u8]) -> Result<bool, String> {
        encode_get(self.protocol, key, &mut self.req);
        let protocol = self.protocol;
        match self.round_trip(|b| parse_get_reply(protocol, key, b))? {
            None => Ok(false),
            Some(r) if &self.buf[r.clone()] == want => Ok(true),
            Some(r) => Err(format!(
                "get {} returned {} bytes that are not its value: {}",
                show(key),
                r.len(),
                show(&self.buf[r])
            )),
        }
    }
}

/// What one connection did in the timed part.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    sets: u64,
    gets: u64,
    misses: u64,
}

struct Shared {
    args: Args,
    /// Everyone connected and prefilled; the timed part starts.
    ready: Barrier,
    stop: AtomicBool,
    errors: AtomicU64,
}

impl Shared {
    fn fail(&self, id: usize, err: &str) {
        let before = self.errors.fetch_add(1, Ordering::Relaxed);
        if before < MAX_ERRORS_SHOWN {
            eprintln!("wire_load: connection {id}: {err}");
        } else if before == MAX_ERRORS_SHOWN {
            eprintln!("wire_load: more errors, not shown");
        }
    }
}

/// One connection's whole life. It always reaches the barrier, also after
/// an error, so the other threads never wait for it forever.
fn client(id: usize, shared: &Shared) -> Tally {
    let args = &shared.args;
    let mut tally = Tally::default();
    let mut conn = match Conn::connect(args.addr, args.protocol) {
        Ok(c) => Some(c),
        Err(e) => {
            shared.fail(id, &e);
            None
        }
    };
    let mut key = [0u8; KEY_BYTES];
    let mut value = vec![b'x'; args.value_bytes];
    if args.prefill {
        if let Some(c) = conn.as_mut() {
            for n in (id as u64..args.keys).step_by(args.connections) {
                write_key(n, &mut key);
                write_value(&key, &mut value);
                if let Err(e) = c.set(&key, &value) {
                    shared.fail(id, &format!("prefill: {e}"));
                    conn = None;
                    break;
                }
            }
        }
    }
    shared.ready.wait();
    // `--seconds 0`: only the prefill.
    let Some(mut conn) = conn.filter(|_| args.seconds > 0.0) else {
        return tally;
    };
    let mut rng = Rng::new(args.seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
    tally.latencies_us.reserve(200_000);
    while !shared.stop.load(Ordering::Relaxed) {
        write_key(rng.below(args.keys), &mut key);
        write_value(&key, &mut value);
        let is_set = args.set_ratio >= 1.0 || rng.unit() < args.set_ratio;
        let t0 = Instant::now();
        let result = if is_set {
            tally.sets += 1;
            conn.set(&key, &value)
        } else {
            tally.gets += 1;
            conn.get(&key, &value).and_then(|hit| {
                if !hit {
                    tally.misses += 1;
                }
                if !hit && args.require_hits {
                    Err(format!("get {} missed, yet every key was set", show(&key)))
                } else {
                    Ok(())
                }
            })
        };
        let us = t0.elapsed().as_micros();
        if let Err(e) = result {
            shared.fail(id, &e);
            break;
        }
        tally
            .latencies_us
            .push(u32::try_from(us).unwrap_or(u32::MAX));
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run() -> Result<bool, String> {
    let args = parse_args()?;
    let shared = Arc::new(Shared {
        ready: Barrier::new(args.connections + 1),
        stop: AtomicBool::new(false),
        errors: AtomicU64::new(0),
        args: args.clone(),
    });
    let started = Instant::now();
    let threads: Vec<_> = (0..args.connections)
        .map(|id| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("wire-load-{id}"))
                .spawn(move || client(id, &shared))
                .map_err(|e| format!("cannot start a client thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    shared.ready.wait();
    let t0 = Instant::now();
    if args.prefill {
        eprintln!(
            "wire_load: {} keys prefilled in {:.1} s",
            args.keys,
            t0.duration_since(started).as_secs_f64()
        );
    }
    // The measured window: every client runs until told to stop.
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    shared.stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for t in threads {
        let tally = t
            .join()
            .map_err(|_| "a client thread panicked".to_string())?;
        all.latencies_us.extend(tally.latencies_us);
        all.sets += tally.sets;
        all.gets += tally.gets;
        all.misses += tally.misses;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut lat = all.latencies_us;
    lat.sort_unstable();
    let errors = shared.errors.load(Ordering::Relaxed);
    let rate = if elapsed > 0.0 {
        lat.len() as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "ops/s {rate:.0} p50_us {} p99_us {} errors {errors} sets {} gets {} misses {} seconds {elapsed:.2}",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        all.sets,
        all.gets,
        all.misses,
    );
    Ok(errors == 0)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wire_load: error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"key:000000000042";

    /// Feeding a reply one byte at a time gives `Incomplete` until the
    /// last byte, then the same result as the whole reply.
    fn parse_in_pieces<T: PartialEq + std::fmt::Debug>(
        whole: &[u8],
        parse: impl Fn(&[u8]) -> Parsed<T>,
    ) -> Parsed<T> {
        for cut in 0..whole.len() {
            assert_eq!(
                parse(&whole[..cut]),
                Parsed::Incomplete,
                "prefix of {cut} bytes of {:?}",
                String::from_utf8_lossy(whole)
            );
        }
        parse(whole)
    }

    /// `parse` calls `bad` a wrong reply.
    fn assert_wrong<T>(bad: &[u8], parse: impl Fn(&[u8]) -> Parsed<T>) {
        assert!(
            matches!(parse(bad), Parsed::Wrong(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }

    #[test]
    fn keys_are_zero_padded_like_redis_benchmark() {
        let mut key = [0u8; KEY_BYTES];
        write_key(42, &mut key);
        assert_eq!(&key, KEY);
        write_key(999_999_999_999, &mut key);
        assert_eq!(&key, b"key:999999999999");
    }

    #[test]
    fn value_starts_with_its_key() {
        let mut value = vec![b'x'; 20];
        write_value(KEY, &mut value);
        assert_eq!(value, b"key:000000000042xxxx");
        let mut short = vec![b'x'; 3];
        write_value(KEY, &mut short);
        assert_eq!(short, b"key");
    }

    #[test]
    fn requests_are_encoded_per_protocol() {
        let mut out = Vec::new();
        encode_set(Protocol::Memcached, b"k1", b"abc", &mut out);
        assert_eq!(out, b"set k1 0 0 3\r\nabc\r\n");
        encode_get(Protocol::Memcached, b"k1", &mut out);
        assert_eq!(out, b"get k1\r\n");
        encode_set(Protocol::Resp, b"k1", b"abc", &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$3\r\nabc\r\n");
        encode_get(Protocol::Resp, b"k1", &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$2\r\nk1\r\n");
    }

    #[test]
    fn set_replies() {
        for (protocol, ok) in [
            (Protocol::Memcached, &b"STORED\r\n"[..]),
            (Protocol::Resp, &b"+OK\r\n"[..]),
        ] {
            let parse = |b: &[u8]| parse_set_reply(protocol, b);
            assert_eq!(parse_in_pieces(ok, parse), Parsed::Done((), ok.len()));
            // A reply followed by more bytes is taken alone; the caller
            // rejects the rest.
            let mut extra = ok.to_vec();
            extra.extend_from_slice(b"END\r\n");
            assert_eq!(parse(&extra), Parsed::Done((), ok.len()));
        }
        for (protocol, bad) in [
            (Protocol::Memcached, &b"NOT_STORED\r\n"[..]),
            (Protocol::Memcached, b"SERVER_ERROR out of memory\r\n"),
            (Protocol::Memcached, b"+OK\r\n"),
            (Protocol::Resp, b"-ERR wrong\r\n"),
            (Protocol::Resp, b"STORED\r\n"),
        ] {
            assert!(
                matches!(parse_set_reply(protocol, bad), Parsed::Wrong(_)),
                "{protocol:?} {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let endless = vec![b'S'; MAX_LINE_BYTES + 1];
        assert!(matches!(
            parse_set_reply(Protocol::Memcached, &endless),
            Parsed::Wrong(_)
        ));
    }

    #[test]
    fn memcached_get_replies() {
        let parse = |b: &[u8]| parse_get_reply(Protocol::Memcached, KEY, b);
        let hit = b"VALUE key:000000000042 0 5\r\nhello\r\nEND\r\n";
        let data = 28..33;
        assert_eq!(&hit[data.clone()], b"hello");
        assert_eq!(
            parse_in_pieces(hit, parse),
            Parsed::Done(Some(data), hit.len())
        );
        assert_eq!(parse_in_pieces(b"END\r\n", parse), Parsed::Done(None, 5));
        // A value holding CRLF is data, not a line end.
        let crlf = b"VALUE key:000000000042 7 4\r\n\r\n\r\n\r\nEND\r\n";
        assert_eq!(parse(crlf), Parsed::Done(Some(28..32), crlf.len()));
        for bad in [
            &b"VALUE key:000000000043 0 5\r\nhello\r\nEND\r\n"[..],
            b"VALUE key:000000000042 0 5 77\r\nhello\r\nEND\r\n",
            b"VALUE key:000000000042 x 5\r\nhello\r\nEND\r\n",
            b"VALUE key:000000000042 0 -5\r\nhello\r\nEND\r\n",
            b"VALUE key:000000000042 0 4\r\nhello\r\nEND\r\n",
            b"VALUE key:000000000042 0 5\r\nhello\r\nENF\r\n",
            b"VALUE key:000000000042 0 5\r\nhelloEND\r\n",
            b"SERVER_ERROR busy\r\n",
            b"ERROR\r\n",
            b"$5\r\nhello\r\n",
        ] {
            assert_wrong(bad, parse);
        }
    }

    #[test]
    fn resp_get_replies() {
        let parse = |b: &[u8]| parse_get_reply(Protocol::Resp, KEY, b);
        let hit = b"$5\r\nhello\r\n";
        assert_eq!(
            parse_in_pieces(hit, parse),
            Parsed::Done(Some(4..9), hit.len())
        );
        assert_eq!(parse_in_pieces(b"$-1\r\n", parse), Parsed::Done(None, 5));
        assert_eq!(parse(b"$0\r\n\r\n"), Parsed::Done(Some(4..4), 6));
        for bad in [
            &b"$5\r\nhelloX\r\n"[..],
            b"$x\r\nhello\r\n",
            b"$+5\r\nhello\r\n",
            b"$-2\r\n",
            b"-ERR wrong\r\n",
            b"+OK\r\n",
            b"END\r\n",
        ] {
            assert_wrong(bad, parse);
        }
    }

    #[test]
    fn rng_spreads_over_the_key_space() {
        let mut rng = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            seen[rng.below(10) as usize] += 1;
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u));
        }
        for count in seen {
            assert!((9_000..11_000).contains(&count), "{seen:?}");
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
