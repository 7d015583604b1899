//! `stress`: many concurrent clients, each on its own connection, each
//! setting random keys to random values and reading them back, verified.
//!
//! Every client gets a fixed-width prefix of its own at the start of its
//! keys, so no two clients ever write the same key and a concurrent
//! overwrite can never look like a wrong read. A wrong read is a failure,
//! never a latency data point.
//!
//! The clients connect first (at most [`MAX_CONNECTING`] at a time, each
//! waiting for one reply before the next may connect, so the server's
//! accept queue never overflows; with retries), wait until all are
//! connected or turned away, and then start together.
//!
//! A server has a connection limit (`kvstore-server --max-connections`,
//! 4096 by default), which 10,000 clients exceed. A client the server turns
//! away (its over-limit reply, or a close or reset, arrives before the
//! first reply: nothing was acknowledged yet) closes, backs off (jittered,
//! [`RETRY_BACKOFF_MIN`] doubling up to [`RETRY_BACKOFF_MAX`]) and connects
//! again, and runs its rounds from the start once it is served. Only a
//! client still turned away when the timeout after the start has run out
//! counts as failed, with that reason. The summary counts the connects
//! turned away.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kvstore_net::Client;
use parking_lot::{Condvar, Mutex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backoff::Backoff;
use crate::endpoint::Endpoint;
use crate::error::{Error, Result};

/// Default timeout of a stress client's connect and requests: with
/// thousands of clients, a request waits behind thousands of others.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Most connects in flight at once.
pub const MAX_CONNECTING: usize = 64;
/// Connect attempts per client before it counts as failed.
pub const CONNECT_ATTEMPTS: u32 = 8;
/// First back-off of a client the server turned away (over its connection
/// limit); it doubles on every further turn-away.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest back-off of a client the server turned away.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Stack size of a client thread: they hold little, and there may be
/// tens of thousands of them.
pub const CLIENT_STACK_BYTES: usize = 128 * 1024;
/// Distinct failure reasons kept for the summary.
pub const MAX_FAILURES_SHOWN: usize = 10;
/// File descriptors kept aside for everything but the client sockets.
const SPARE_FDS: u64 = 64;
/// The bytes a stress key is made of: printable, no space (protocol-valid).
const KEY_ALPHABET: std::ops::RangeInclusive<u8> = 0x21..=0x7e;
/// The bytes a stress value is made of: printable, space included.
const VALUE_ALPHABET: std::ops::RangeInclusive<u8> = 0x20..=0x7e;

/// What to run.
#[derive(Debug, Clone)]
pub struct StressConfig {
    /// The server.
    pub endpoint: Endpoint,
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Longest key, in bytes (default 30); keys are 1..=max_key bytes.
    pub max_key: usize,
    /// Longest value, in bytes (default 1000); values are 1..=max_value bytes.
    pub max_value: usize,
    /// Set-get-verify rounds per client (default 1).
    pub rounds: usize,
    /// Seed of the random keys and values (default: from the clock; the
    /// summary prints the one used).
    pub seed: Option<u64>,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl StressConfig {
    /// `clients` clients against `endpoint` with the defaults of the
    /// `stress` command: keys up to 30 bytes, values up to 1000, one round,
    /// a clock seed, and a progress bar when stderr is a terminal. The
    /// endpoint's timeout is used as it is (see [`DEFAULT_TIMEOUT`]).
    pub fn new(endpoint: Endpoint, clients: usize) -> StressConfig {
        StressConfig {
            endpoint,
            clients,
            max_key: 30,
            max_value: 1000,
            rounds: 1,
            seed: None,
            progress: true,
        }
    }
}

/// Slowest latency a histogram records exactly (one hour); a slower
/// operation counts as this long.
const LATENCY_MAX_NANOS: u64 = 3_600 * 1_000_000_000;
/// Significant decimal digits of recorded latencies: enough for the two
/// decimals of milliseconds the summary prints.
const LATENCY_DIGITS: u8 = 3;

/// Latencies of one kind of operation, in constant memory whatever the
/// number of rounds (an HDR histogram, shared by all clients).
pub struct LatencyRecorder {
    histogram: Mutex<Histogram<u64>>,
}

impl LatencyRecorder {
    /// An empty recorder.
    ///
    /// # Errors
    ///
    /// Never in practice: the bounds are constants a histogram accepts.
    pub fn new() -> Result<LatencyRecorder> {
        let histogram = Histogram::new_with_bounds(1, LATENCY_MAX_NANOS, LATENCY_DIGITS)
            .map_err(|e| Error::Usage(format!("latency histogram: {e}")))?;
        Ok(LatencyRecorder {
            histogram: Mutex::new(histogram),
        })
    }

    /// Records one operation that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.lock().saturating_record(nanos.max(1));
    }

    /// The percentiles recorded so far.
    pub fn latency(&self) -> Latency {
        Latency::from_histogram(&self.histogram.lock())
    }
}

/// Latency percentiles of one kind of operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl Latency {
    /// Percentiles of a histogram of nanoseconds, to its precision
    /// (three significant digits in the histograms `stress` records).
    pub fn from_histogram(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            p50: Duration::from_nanos(histogram.value_at_quantile(0.50)),
            p99: Duration::from_nanos(histogram.value_at_quantile(0.99)),
            max: Duration::from_nanos(histogram.max()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p99 {} max {}",
            fmt_latency(self.p50),
            fmt_latency(self.p99),
            fmt_latency(self.max)
        )
    }
}

fn fmt_latency(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0}us")
    } else {
        format!("{:.2}ms", micros / 1000.0)
    }
}

/// What a stress run did. Its `Display` is the summary the `stress`
/// command prints; the last line is exactly `clients=N ok=N failed=F`.
#[derive(Debug, Clone)]
pub struct StressSummary {
    /// The server.
    pub addr: String,
    /// Clients started.
    pub clients: usize,
    /// Clients whose every round read back what it wrote.
    pub ok: usize,
    /// Clients that failed to connect, got an error, or read a wrong value.
    pub failed: usize,
    /// Rounds per client.
    pub rounds: usize,
    /// Rounds that verified.
    pub rounds_ok: u64,
    /// The seed used.
    pub seed: u64,
    /// Time until every client was connected (or turned away by the
    /// server's connection limit, to retry after the start).
    pub connect_time: Duration,
    /// Connects the server turned away (over its connection limit, or
    /// closed before the first reply); each was retried after a back-off.
    pub turned_away: u64,
    /// Time from the start signal until the last client finished.
    pub run_time: Duration,
    /// Successful set and get requests.
    pub ops: u64,
    /// Set latencies.
    pub set: Latency,
    /// Get latencies.
    pub get: Latency,
    /// Failed clients grouped by reason, in order of first appearance; at
    /// most [`MAX_FAILURES_SHOWN`] reasons.
    pub failures: Vec<FailureGroup>,
}

/// Clients that failed for the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureGroup {
    /// What went wrong, for example `wrong read: got 3 bytes, set 5 bytes`.
    pub reason: String,
    /// How many clients failed this way.
    pub clients: usize,
    /// Where it happened first, for example `client 7 round 0 key !(ab`.
    pub first: String,
}

impl fmt::Display for FailureGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.clients == 1 {
            write!(f, "{} ({})", self.reason, self.first)
        } else {
            write!(
                f,
                "{} ({} clients; first {})",
                self.reason, self.clients, self.first
            )
        }
    }
}

/// One failed client: where, and why.
struct Failure {
    context: String,
    reason: String,
}

/// Groups failures by reason, keeping the first [`MAX_FAILURES_SHOWN`].
#[derive(Default)]
struct FailureLog {
    groups: Vec<FailureGroup>,
    failed: usize,
}

impl FailureLog {
    fn add(&mut self, failure: Failure) {
        self.failed += 1;
        if let Some(group) = self.groups.iter_mut().find(|g| g.reason == failure.reason) {
            group.clients += 1;
        } else if self.groups.len() < MAX_FAILURES_SHOWN {
            self.groups.push(FailureGroup {
                reason: failure.reason,
                clients: 1,
                first: failure.context,
            });
        }
    }
}

impl StressSummary {
    /// Requests per second over the run phase.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.run_time.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// `clients=N ok=N failed=F`, the last line of the summary.
    pub fn last_line(&self) -> String {
        format!(
            "clients={} ok={} failed={}",
            self.clients, self.ok, self.failed
        )
    }
}

impl fmt::Display for StressSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "stress: {} clients x {} rounds against {} (seed {})",
            self.clients, self.rounds, self.addr, self.seed
        )?;
        writeln!(
            f,
            "connected in {}; ran in {}",
            fmt_duration(self.connect_time),
            fmt_duration(self.run_time)
        )?;
        writeln!(
            f,
            "connects turned away by the server's connection limit: {} (retried after a back-off)",
            self.turned_away
        )?;
        writeln!(
            f,
            "rounds: {} ok, {} failed; {} requests, {:.0} ops/s",
            self.rounds_ok,
            (self.clients * self.rounds) as u64
                - self.rounds_ok.min((self.clients * self.rounds) as u64),
            self.ops,
            self.ops_per_sec()
        )?;
        writeln!(f, "set latency: {}", self.set)?;
        writeln!(f, "get latency: {}", self.get)?;
        for failure in &self.failures {
            writeln!(f, "failure: {failure}")?;
        }
        let shown: usize = self.failures.iter().map(|g| g.clients).sum();
        if self.failed > shown {
            writeln!(
                f,
                "({} more failed clients, for other reasons, not shown)",
                self.failed - shown
            )?;
        }
        write!(f, "{}", self.last_line())
    }
}

fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

/// Runs the stress test: connects `config.clients` clients, runs their
/// rounds concurrently and returns the summary. Raises the soft open-file
/// limit to the hard one first.
///
/// # Errors
///
/// - [`Error::Usage`] when the configuration cannot work (`max_key` too
///   short to give every client its own key prefix, `max_value` 0, more
///   clients than open files).
/// - [`Error::Connect`] when a first probe connection fails: the server is
///   not there at all.
///
/// Failures of single clients are not errors: they are counted in the
/// summary. Clients turned away by the server's connection limit retry
/// until `config.endpoint.timeout` after the start (see the module doc).
pub fn run(config: &StressConfig) -> Result<StressSummary> {
    let width = prefix_width(config.clients);
    if config.clients > 0 && config.max_key < width.max(1) {
        return Err(Error::Usage(format!(
            "--max-key {} is too short: {} clients need keys of at least {} bytes",
            config.max_key, config.clients, width
        )));
    }
    if config.max_value == 0 {
        return Err(Error::Usage("--max-value must be at least 1".to_string()));
    }
    let limit = raise_fd_limit();
    if let Some(limit) = limit {
        if config.clients as u64 + SPARE_FDS > limit {
            return Err(Error::Usage(format!(
                "{} clients need more open files than the limit of {limit}; raise it (ulimit -n)",
                config.clients
            )));
        }
    }
    let seed = config.seed.unwrap_or_else(clock_seed);
    let addr = config.endpoint.addr();

    // Probe: a server that is not there is one clear error, not N failures.
    {
        let _probe = config.endpoint.connect()?;
    }

    let total_rounds = (config.clients * config.rounds) as u64;
    let progress = progress_bar(config.progress, config.clients as u64);
    let shared = Arc::new(Shared {
        connecting: Slots::new(MAX_CONNECTING),
        start: Gate::default(),
        progress: progress.clone(),
        ops: AtomicU64::new(0),
        turned_away: AtomicU64::new(0),
        set_latency: LatencyRecorder::new()?,
        get_latency: LatencyRecorder::new()?,
    });

    let begin = Instant::now();
    let mut handles = Vec::with_capacity(config.clients);
    let mut spawn_failures = Vec::new();
    for id in 0..config.clients {
        let job = ClientJob {
            id,
            width,
            endpoint: config.endpoint.clone(),
            max_key: config.max_key,
            max_value: config.max_value,
            rounds: config.rounds,
            seed,
            shared: Arc::clone(&shared),
        };
        let spawned = thread::Builder::new()
            .name(format!("stress-{id}"))
            .stack_size(CLIENT_STACK_BYTES)
            .spawn(move || job.run());
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(err) => spawn_failures.push(Failure {
                context: format!("client {id}"),
                reason: format!("cannot start a thread: {err}"),
            }),
        }
    }
    shared.start.wait_ready(handles.len());
    let connect_time = begin.elapsed();
    if let Some(bar) = &progress {
        bar.set_length(total_rounds);
        bar.set_position(0);
        bar.set_message("set+get");
    }
    let run_begin = Instant::now();
    shared.start.open();

    let mut ok = 0;
    let mut rounds_ok = 0;
    let mut failures = FailureLog::default();
    for failure in spawn_failures {
        failures.add(failure);
    }
    for (id, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(outcome) => {
                rounds_ok += outcome.rounds_ok;
                match outcome.failure {
                    None => ok += 1,
                    Some(failure) => failures.add(failure),
                }
            }
            Err(_) => failures.add(Failure {
                context: format!("client {id}"),
                reason: "client thread panicked".to_string(),
            }),
        }
    }
    let run_time = run_begin.elapsed();
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    Ok(StressSummary {
        addr,
        clients: config.clients,
        ok,
        failed: failures.failed,
        rounds: config.rounds,
        rounds_ok,
        seed,
        connect_time,
        turned_away: shared.turned_away.load(Ordering::Relaxed),
        run_time,
        ops: shared.ops.load(Ordering::Relaxed),
        set: shared.set_latency.latency(),
        get: shared.get_latency.latency(),
        failures: failures.groups,
    })
}

fn progress_bar(wanted: bool, clients: u64) -> Option<ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(clients), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{spinner} {msg:10} [{elapsed_precise}] {wide_bar} {pos}/{len}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message("connecting");
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Bytes of the per-client key prefix: enough base-94 digits to number
/// every client.
pub fn prefix_width(clients: usize) -> usize {
    let base = KEY_ALPHABET.len();
    let mut width = 1;
    let mut capacity = base;
    while capacity < clients {
        width += 1;
        capacity = capacity.saturating_mul(base);
    }
    width
}

/// Key prefix of client `id`: `width` base-94 digits from the key alphabet.
fn key_prefix(mut id: usize, width: usize) -> Vec<u8> {
    let base = KEY_ALPHABET.len();
    let mut prefix = vec![*KEY_ALPHABET.start(); width];
    for slot in prefix.iter_mut().rev() {
        *slot = KEY_ALPHABET.start() + (id % base) as u8;
        id /= base;
    }
    prefix
}

/// A random key of 1..=max_key bytes (at least the prefix) starting with
/// `prefix`.
fn random_key(rng: &mut StdRng, prefix: &[u8], max_key: usize) -> Vec<u8> {
    let len = rng.gen_range(prefix.len().max(1)..=max_key.max(prefix.len()).max(1));
    let mut key = prefix.to_vec();
    key.extend((prefix.len()..len).map(|_| rng.gen_range(KEY_ALPHABET)));
    key
}

fn random_value(rng: &mut StdRng, max_value: usize) -> Vec<u8> {
    let len = rng.gen_range(1..=max_value.max(1));
    (0..len).map(|_| rng.gen_range(VALUE_ALPHABET)).collect()
}

/// Raises the soft limit of open files to the hard limit; returns the
/// limit in force (`None` where it is unlimited or cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit != rlimit::INFINITY => Some(limit),
        _ => None,
    }
}

struct Shared {
    connecting: Slots,
    start: Gate,
    progress: Option<ProgressBar>,
    ops: AtomicU64,
    turned_away: AtomicU64,
    set_latency: LatencyRecorder,
    get_latency: LatencyRecorder,
}

/// A counting semaphore bounding connects in flight.
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock();
        while *free == 0 {
            self.cv.wait(&mut free);
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock() += 1;
        self.0.cv.notify_one();
    }
}

/// Counts clients ready and lets them all go at once.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    ready_cv: Condvar,
    go_cv: Condvar,
}

#[derive(Default)]
struct GateState {
    ready: usize,
    /// When the gate opened.
    open: Option<Instant>,
}

impl Gate {
    fn ready(&self) {
        self.state.lock().ready += 1;
        self.ready_cv.notify_one();
    }
    fn wait_ready(&self, n: usize) {
        let mut state = self.state.lock();
        while state.ready < n {
            self.ready_cv.wait(&mut state);
        }
    }
    fn open(&self) {
        self.state.lock().open = Some(Instant::now());
        self.go_cv.notify_all();
    }
    /// Waits until the gate is open; returns when it opened.
    fn wait_open(&self) -> Instant {
        let mut state = self.state.lock();
        loop {
            if let Some(opened) = state.open {
                return opened;
            }
            self.go_cv.wait(&mut state);
        }
    }
}

/// Signals "ready" when dropped, so a client that fails or panics before
/// it is connected never leaves the start gate waiting.
struct ReadyGuard<'a> {
    shared: &'a Shared,
    done: bool,
}

impl ReadyGuard<'_> {
    fn signal(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.start.ready();
            if let Some(bar) = &self.shared.progress {
                bar.inc(1);
            }
        }
    }
}

impl Drop for ReadyGuard<'_> {
    fn drop(&mut self) {
        self.signal();
    }
}

struct ClientJob {
    id: usize,
    width: usize,
    endpoint: Endpoint,
    max_key: usize,
    max_value: usize,
    rounds: usize,
    seed: u64,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct ClientOutcome {
    rounds_ok: u64,
    failure: Option<Failure>,
}

/// How one connect went.
enum Attempt {
    /// The server answered the first request: the connection is in.
    Served(Client),
    /// The server turned the connection away before answering anything
    /// (over its connection limit); worth retrying. The reason, for the
    /// failure should the retries run out.
    TurnedAway(Error),
    /// A real failure (connect refused or timed out, a timeout or protocol
    /// error on the first request): not retried.
    Failed(Error),
}

impl ClientJob {
    fn run(self) -> ClientOutcome {
        let shared = Arc::clone(&self.shared);
        let mut ready = ReadyGuard {
            shared: &shared,
            done: false,
        };
        let mut attempt = self.attempt();
        ready.signal();
        let deadline = shared.start.wait_open() + self.endpoint.timeout;
        let mut backoff = Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX)
            .jittered(self.seed ^ !(self.id as u64));
        let mut outcome = ClientOutcome::default();
        loop {
            let err = match attempt {
                Attempt::Served(mut client) => {
                    if let Err(failure) = self.rounds(&mut client, &mut outcome) {
                        outcome.failure = Some(failure);
                    }
                    return outcome;
                }
                Attempt::TurnedAway(err) => {
                    let now = Instant::now();
                    if now < deadline {
                        // Nothing was acknowledged on that connection (it
                        // is closed now): wait, connect again, and run the
                        // rounds from the start.
                        thread::sleep(backoff.delay().min(deadline - now));
                        attempt = self.attempt();
                        continue;
                    }
                    match err {
                        Error::Server { addr, what } => Error::Server {
                            addr,
                            what: format!(
                                "{what}; still turned away when the {} timeout ran out",
                                crate::error::fmt_secs(self.endpoint.timeout)
                            ),
                        },
                        other => other,
                    }
                }
                Attempt::Failed(err) => err,
            };
            outcome.failure = Some(Failure {
                context: format!("client {}", self.id),
                reason: err.to_string(),
            });
            if let Some(bar) = &shared.progress {
                bar.inc(self.rounds as u64);
            }
            return outcome;
        }
    }

    /// Connects (holding a connect slot) and waits for the first reply.
    fn attempt(&self) -> Attempt {
        let _slot = self.shared.connecting.acquire();
        let attempt = match self.endpoint.connect_with_retries(CONNECT_ATTEMPTS) {
            Ok(client) => self.check_served(client),
            Err(err) => Attempt::Failed(err),
        };
        if matches!(attempt, Attempt::TurnedAway(_)) {
            self.shared.turned_away.fetch_add(1, Ordering::Relaxed);
        }
        attempt
    }

    /// Waits for one reply (a `get` of this client's bare prefix, a key
    /// that only this client may use) before giving up the connect slot,
    /// and tells a served connection from one the server turned away.
    ///
    /// `connect` returns when the kernel has completed the handshake, not
    /// when the server has accepted the connection: without this wait,
    /// fast connects pile up in the server's accept queue, which overflows
    /// (Linux then drops SYNs and the client waits a 1 s retransmit).
    /// Holding the slot until the server answers bounds the queue by
    /// [`MAX_CONNECTING`].
    fn check_served(&self, mut client: Client) -> Attempt {
        use std::io::ErrorKind;
        let addr = self.endpoint.addr();
        match client.get(key_prefix(self.id, self.width)) {
            Ok(_) => Attempt::Served(client),
            // What a server over its connection limit answers in the seed
            // dialect before it closes; this `get` is valid, so nothing
            // else can bring this reply.
            Err(kvstore_net::Error::Rejected(reply)) => Attempt::TurnedAway(Error::Server {
                addr,
                what: format!(
                    "refused the connection ({}; over its connection limit?)",
                    reply.trim_end()
                ),
            }),
            // Closed or reset before any reply: the over-limit line can be
            // lost to a reset when the server closes with our request
            // unread.
            Err(kvstore_net::Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                Attempt::TurnedAway(Error::Server {
                    addr,
                    what: format!(
                        "closed the connection before its first reply ({})",
                        crate::error::describe_io(&source)
                    ),
                })
            }
            Err(e) => Attempt::Failed(self.endpoint.error(e)),
        }
    }

    /// Runs the rounds; the first wrong read or error ends the client.
    fn rounds(&self, client: &mut Client, outcome: &mut ClientOutcome) -> Result<(), Failure> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (self.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let prefix = key_prefix(self.id, self.width);
        for round in 0..self.rounds {
            let key = random_key(&mut rng, &prefix, self.max_key);
            let value = random_value(&mut rng, self.max_value);
            let result = self.round(client, &key, &value);
            if let Some(bar) = &self.shared.progress {
                bar.inc(1);
            }
            if let Err(reason) = result {
                if let Some(bar) = &self.shared.progress {
                    bar.inc((self.rounds - round - 1) as u64);
                }
                return Err(Failure {
                    context: format!(
                        "client {} round {} key {}",
                        self.id,
                        round,
                        String::from_utf8_lossy(&key)
                    ),
                    reason,
                });
            }
            outcome.rounds_ok += 1;
        }
        Ok(())
    }

    fn round(&self, client: &mut Client, key: &[u8], value: &[u8]) -> Result<(), String> {
        let t = Instant::now();
        client
            .set(key, value)
            .map_err(|e| format!("set: {}", self.endpoint.error(e)))?;
        self.shared.set_latency.record(t.elapsed());
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
        let t = Instant::now();
        let got = client
            .get(key)
            .map_err(|e| format!("get: {}", self.endpoint.error(e)))?;
        self.shared.get_latency.record(t.elapsed());
        self.shared.ops.fetch_add(1, Ordering::Relaxed);
        if got != value {
            return Err(format!(
                "wrong read: got {} bytes, set {} bytes{}",
                got.len(),
                value.len(),
                if got.len() == value.len() {
                    " with different content"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn prefix_width_numbers_every_client() {
        assert_eq!(prefix_width(1), 1);
        assert_eq!(prefix_width(94), 1);
        assert_eq!(prefix_width(95), 2);
        assert_eq!(prefix_width(10_000), 3);
    }

    #[test]
    fn prefixes_are_distinct_and_protocol_valid() {
        let width = prefix_width(10_000);
        let prefixes: HashSet<Vec<u8>> = (0..10_000).map(|id| key_prefix(id, width)).collect();
        assert_eq!(prefixes.len(), 10_000);
        assert!(prefixes
            .iter()
            .all(|p| p.len() == width && p.iter().all(|b| (0x21..=0x7e).contains(b))));
    }

    #[test]
    fn random_keys_and_values_respect_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let prefix = key_prefix(42, 2);
        let mut lens = HashSet::new();
        for _ in 0..2000 {
            let key = random_key(&mut rng, &prefix, 30);
            assert!(key.starts_with(&prefix));
            assert!((2..=30).contains(&key.len()));
            assert!(key.iter().all(|b| (0x21..=0x7e).contains(b)));
            lens.insert(key.len());
            let value = random_value(&mut rng, 1000);
            assert!((1..=1000).contains(&value.len()));
            assert!(value.iter().all(|b| (0x20..=0x7e).contains(b)));
        }
        assert_eq!(lens.len(), 29, "every key length 2..=30 occurs");
        let one = random_key(&mut rng, &key_prefix(0, 1), 1);
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn percentiles_come_from_the_histogram_to_its_precision() {
        let recorder = LatencyRecorder::new().unwrap();
        assert_eq!(recorder.latency(), Latency::default());
        for n in (1..=100).rev() {
            recorder.record(Duration::from_micros(n));
        }
        let lat = recorder.latency();
        let close = |got: Duration, want_micros: u64| {
            let want = Duration::from_micros(want_micros).as_nanos() as f64;
            (got.as_nanos() as f64 - want).abs() / want < 1e-3
        };
        assert_eq!(lat.count, 100);
        assert!(close(lat.p50, 50), "p50 {:?}", lat.p50);
        assert!(close(lat.p99, 99), "p99 {:?}", lat.p99);
        assert!(close(lat.max, 100), "max {:?}", lat.max);
    }

    #[test]
    fn latencies_past_an_hour_count_as_an_hour() {
        let recorder = LatencyRecorder::new().unwrap();
        recorder.record(Duration::from_secs(10 * 3600));
        recorder.record(Duration::ZERO);
        let lat = recorder.latency();
        assert_eq!(lat.count, 2);
        assert!(lat.max >= Duration::from_secs(3599) && lat.max <= Duration::from_secs(3604));
    }

    #[test]
    fn summary_ends_with_the_exact_last_line() {
        let summary = StressSummary {
            addr: "127.0.0.1:1".into(),
            clients: 3,
            ok: 2,
            failed: 1,
            rounds: 1,
            rounds_ok: 2,
            seed: 1,
            connect_time: Duration::from_millis(3),
            turned_away: 7,
            run_time: Duration::from_millis(10),
            ops: 5,
            set: Latency::default(),
            get: Latency::default(),
            failures: vec![FailureGroup {
                reason: "wrong read: got 1 bytes, set 2 bytes".into(),
                clients: 1,
                first: "client 2 round 0 key x".into(),
            }],
        };
        let text = summary.to_string();
        assert_eq!(text.lines().last(), Some("clients=3 ok=2 failed=1"));
        assert!(text.contains("500 ops/s"), "{text}");
        assert!(
            text.contains("connects turned away by the server's connection limit: 7 ("),
            "{text}"
        );
        assert!(
            text.contains(
                "failure: wrong read: got 1 bytes, set 2 bytes (client 2 round 0 key x)\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn too_short_max_key_is_a_usage_error() {
        let mut config = StressConfig::new(Endpoint::new("127.0.0.1", 1), 1000);
        config.max_key = 1;
        assert!(matches!(run(&config), Err(Error::Usage(_))));
    }
}

#[cfg(test)]
mod failure_tests {
    use super::*;

    fn failure(id: usize, reason: &str) -> Failure {
        Failure {
            context: format!("client {id}"),
            reason: reason.to_string(),
        }
    }

    #[test]
    fn failures_group_by_reason_in_order() {
        let mut log = FailureLog::default();
        log.add(failure(3, "timed out"));
        log.add(failure(5, "wrong read"));
        log.add(failure(9, "timed out"));
        assert_eq!(log.failed, 3);
        assert_eq!(log.groups.len(), 2);
        assert_eq!(
            log.groups[0].to_string(),
            "timed out (2 clients; first client 3)"
        );
        assert_eq!(log.groups[1].to_string(), "wrong read (client 5)");
    }

    #[test]
    fn reasons_past_the_limit_are_counted_not_kept() {
        let mut log = FailureLog::default();
        for id in 0..MAX_FAILURES_SHOWN + 5 {
            log.add(failure(id, &format!("reason {id}")));
        }
        assert_eq!(log.failed, MAX_FAILURES_SHOWN + 5);
        assert_eq!(log.groups.len(), MAX_FAILURES_SHOWN);
    }
}
