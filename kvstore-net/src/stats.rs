//! Server-wide statistics: the connection figures the server keeps, the
//! command counters derived from what the executor ran ([`Stats::record`]),
//! and the groups of `stats <group>` in memcached's field names.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use kvstore_core::item::unix_now;
use kvstore_core::{Error as StoreError, Store};

use crate::exec::{Command, Failure, Response, StoreMode, KVSTORE_VERSION, VERSION};

/// A `(name, value)` line of a stats group.
pub(crate) type StatLine = (String, String);

/// The byte that ends a key's prefix for `stats detail` (memcached's `-D`
/// default).
pub(crate) const PREFIX_DELIMITER: u8 = b':';

/// The most prefixes `stats detail` keeps; keys with new prefixes past it
/// are not counted (bounded memory against a client that invents prefixes).
pub(crate) const MAX_DETAIL_PREFIXES: usize = 10_000;

/// What `stats settings` reports: the server's configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// The connection limit.
    pub max_connections: usize,
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// The address listened on.
    pub bind: String,
    /// Port of the memcached dialect (0: none).
    pub memcached_port: u16,
    /// `auto-negotiate`, `ascii` or `binary`.
    pub binding_protocol: &'static str,
    /// Idle timeout in seconds (0: none).
    pub idle_timeout_secs: u64,
    /// Whether `shutdown` is honoured.
    pub shutdown_enabled: bool,
    /// The listen backlog.
    pub tcp_backlog: i32,
}

/// One open connection, for `stats conns`.
#[derive(Debug)]
struct ConnEntry {
    fd: i32,
    peer: SocketAddr,
    listen: SocketAddr,
    last_active: Arc<AtomicU64>,
}

/// Per-prefix counts of `stats detail`.
#[derive(Debug, Default, Clone, Copy)]
struct PrefixCounts {
    get: u64,
    hit: u64,
    set: u64,
    del: u64,
}

/// Server-wide statistics.
#[derive(Debug)]
pub(crate) struct Stats {
    /// When the server started.
    pub started: Instant,
    /// Open connections.
    pub curr_connections: AtomicUsize,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Connections refused over the limit.
    pub rejected_connections: AtomicU64,
    /// Connections closed for being idle.
    pub idle_kicks: AtomicU64,
    /// Whether the server accepts connections (false once shutting down).
    pub accepting: AtomicBool,
    /// `read` calls on client sockets.
    pub read_calls: AtomicU64,
    /// `write` calls on client sockets (one per batch of pipelined
    /// requests, unless a reply is larger than the flush threshold).
    pub write_calls: AtomicU64,
    /// Bytes read from clients.
    pub bytes_read: AtomicU64,
    /// Bytes written to clients.
    pub bytes_written: AtomicU64,
    /// The current `verbosity` level.
    pub verbosity: AtomicU64,
    settings: Mutex<Settings>,
    counters: Counters,
    conns: Mutex<BTreeMap<u64, ConnEntry>>,
    listeners: Mutex<Vec<(i32, SocketAddr)>>,
    detail_on: AtomicBool,
    detail: Mutex<HashMap<Vec<u8>, PrefixCounts>>,
}

/// The counters [`Stats::record`] derives from executed commands; zeroed
/// by `stats reset`.
#[derive(Debug, Default)]
struct Counters {
    cmd_get: AtomicU64,
    cmd_set: AtomicU64,
    cmd_flush: AtomicU64,
    cmd_touch: AtomicU64,
    get_hits: AtomicU64,
    get_misses: AtomicU64,
    delete_hits: AtomicU64,
    delete_misses: AtomicU64,
    incr_hits: AtomicU64,
    incr_misses: AtomicU64,
    decr_hits: AtomicU64,
    decr_misses: AtomicU64,
    cas_hits: AtomicU64,
    cas_misses: AtomicU64,
    cas_badval: AtomicU64,
    touch_hits: AtomicU64,
    touch_misses: AtomicU64,
    total_items: AtomicU64,
    store_too_large: AtomicU64,
    store_errors: AtomicU64,
    auth_cmds: AtomicU64,
    auth_errors: AtomicU64,
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 22] {
        [
            &self.cmd_get,
            &self.cmd_set,
            &self.cmd_flush,
            &self.cmd_touch,
            &self.get_hits,
            &self.get_misses,
            &self.delete_hits,
            &self.delete_misses,
            &self.incr_hits,
            &self.incr_misses,
            &self.decr_hits,
            &self.decr_misses,
            &self.cas_hits,
            &self.cas_misses,
            &self.cas_badval,
            &self.touch_hits,
            &self.touch_misses,
            &self.total_items,
            &self.store_too_large,
            &self.store_errors,
            &self.auth_cmds,
            &self.auth_errors,
        ]
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

fn line(name: impl Into<String>, value: impl ToString) -> StatLine {
    (name.into(), value.to_string())
}

/// CPU time of the process as memcached prints it (`<sec>.<usec>`).
fn rusage() -> (String, String) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the zeroed buffer we own.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    if !ok {
        return ("0.000000".into(), "0.000000".into());
    }
    // SAFETY: initialised (zeroed, then filled by a successful call).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| format!("{}.{:06}", t.tv_sec, t.tv_usec);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

impl Stats {
    /// Fresh statistics.
    pub(crate) fn new() -> Stats {
        Stats {
            started: Instant::now(),
            curr_connections: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            idle_kicks: AtomicU64::new(0),
            accepting: AtomicBool::new(true),
            read_calls: AtomicU64::new(0),
            write_calls: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            verbosity: AtomicU64::new(0),
            settings: Mutex::new(Settings::default()),
            counters: Counters::default(),
            conns: Mutex::new(BTreeMap::new()),
            listeners: Mutex::new(Vec::new()),
            detail_on: AtomicBool::new(false),
            detail: Mutex::new(HashMap::new()),
        }
    }

    /// Sets what `stats settings` reports.
    pub(crate) fn set_settings(&self, settings: Settings) {
        *self.settings.lock() = settings;
    }

    /// Whether `shutdown` is honoured.
    pub(crate) fn shutdown_enabled(&self) -> bool {
        self.settings.lock().shutdown_enabled
    }

    /// Records a listening socket for `stats conns`.
    pub(crate) fn add_listener(&self, fd: i32, addr: SocketAddr) {
        self.listeners.lock().push((fd, addr));
    }

    /// Registers an open connection; returns its last-activity clock, which
    /// the connection updates after each batch.
    pub(crate) fn conn_opened(
        &self,
        id: u64,
        fd: i32,
        peer: SocketAddr,
        listen: SocketAddr,
    ) -> Arc<AtomicU64> {
        let last_active = Arc::new(AtomicU64::new(unix_now()));
        self.conns.lock().insert(
            id,
            ConnEntry {
                fd,
                peer,
                listen,
                last_active: Arc::clone(&last_active),
            },
        );
        last_active
    }

    /// Forgets a closed connection.
    pub(crate) fn conn_closed(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// Counts one executed command by its response. The only place where
    /// command counters change.
    pub(crate) fn record(&self, cmd: &Command<'_>, resp: &Response<'_>) {
        let c = &self.counters;
        // The meta commands count as the text commands they stand for
        // (`mg` as `get`/`gat`, `ms` as `set`, `md` as `delete`, `ma` as
        // `incr`/`decr`), so `stats` reads the same whichever dialect a
        // client speaks.
        match cmd {
            Command::Get { touch, .. } | Command::MetaGet { touch, .. } => {
                bump(&c.cmd_get);
                let hit = matches!(resp, Response::Hit(_) | Response::MetaHit { .. });
                let miss = matches!(resp, Response::Miss);
                if hit {
                    bump(&c.get_hits);
                } else if miss {
                    bump(&c.get_misses);
                }
                if touch.is_some() {
                    bump(&c.cmd_touch);
                    if hit {
                        bump(&c.touch_hits);
                    } else if miss {
                        bump(&c.touch_misses);
                    }
                }
                self.detail(cmd, |p| {
                    p.get += 1;
                    p.hit += u64::from(hit);
                });
            }
            Command::Store { cas, mode, .. } | Command::MetaStore { cas, mode, .. } => {
                bump(&c.cmd_set);
                let checked = cas.is_some() && *mode != StoreMode::Add;
                match resp {
                    Response::Stored { .. } | Response::MetaStored { .. } => {
                        bump(&c.total_items);
                        if checked {
                            bump(&c.cas_hits);
                        }
                    }
                    Response::Exists if checked => bump(&c.cas_badval),
                    Response::NotFound if checked => bump(&c.cas_misses),
                    Response::Failed(Failure::TooLarge) => bump(&c.store_too_large),
                    _ => {}
                }
                self.detail(cmd, |p| p.set += 1);
            }
            Command::StoreTooLarge { .. } => {
                bump(&c.cmd_set);
                bump(&c.store_too_large);
                self.detail(cmd, |p| p.set += 1);
            }
            // A cas mismatch counts as a miss, as memcached's `md` does.
            Command::Delete { .. } | Command::MetaDelete { .. } => {
                match resp {
                    Response::Deleted => bump(&c.delete_hits),
                    Response::NotFound | Response::Exists => bump(&c.delete_misses),
                    _ => {}
                }
                self.detail(cmd, |p| p.del += 1);
            }
            Command::Counter { incr, .. } | Command::MetaArithmetic { incr, .. } => {
                let (hits, misses) = if *incr {
                    (&c.incr_hits, &c.incr_misses)
                } else {
                    (&c.decr_hits, &c.decr_misses)
                };
                match resp {
                    Response::Counter { .. } | Response::MetaCounter { .. } => bump(hits),
                    Response::NotFound => bump(misses),
                    _ => {}
                }
            }
            Command::Touch { .. } => {
                bump(&c.cmd_touch);
                match resp {
                    Response::Touched => bump(&c.touch_hits),
                    Response::NotFound => bump(&c.touch_misses),
                    _ => {}
                }
            }
            Command::Flush { .. } => bump(&c.cmd_flush),
            Command::Stats(_)
            | Command::Version
            | Command::Verbosity { .. }
            | Command::CacheMemlimit { .. }
            | Command::Shutdown
            | Command::MetaDebug { .. } => {}
        }
    }

    /// Counts a command under its key's prefix when `stats detail` is on.
    fn detail(&self, cmd: &Command<'_>, f: impl FnOnce(&mut PrefixCounts)) {
        if !self.detail_on.load(Relaxed) {
            return;
        }
        let Some(key) = cmd.key() else { return };
        // memcached counts only keys that hold the delimiter.
        let Some(end) = key.iter().position(|&b| b == PREFIX_DELIMITER) else {
            return;
        };
        let prefix = &key[..end];
        let mut detail = self.detail.lock();
        if let Some(p) = detail.get_mut(prefix) {
            f(p);
        } else if detail.len() < MAX_DETAIL_PREFIXES {
            f(detail.entry(prefix.to_vec()).or_default());
        }
    }

    /// Turns `stats detail` on or off (off also forgets the counts, as
    /// memcached does).
    pub(crate) fn set_detail(&self, on: bool) {
        self.detail_on.store(on, Relaxed);
        if !on {
            self.detail.lock().clear();
        }
    }

    /// `stats detail dump`: `PREFIX <p> get <n> hit <n> set <n> del <n>`
    /// lines, prefixes in byte order.
    pub(crate) fn detail_dump(&self) -> Vec<String> {
        let detail = self.detail.lock();
        let mut prefixes: Vec<_> = detail.iter().collect();
        prefixes.sort_by(|a, b| a.0.cmp(b.0));
        prefixes
            .into_iter()
            .map(|(p, c)| {
                format!(
                    "PREFIX {} get {} hit {} set {} del {}",
                    String::from_utf8_lossy(p),
                    c.get,
                    c.hit,
                    c.set,
                    c.del
                )
            })
            .collect()
    }

    /// `stats reset`: zeroes the command counters and the socket figures.
    pub(crate) fn reset(&self) {
        for counter in self.counters.all() {
            counter.store(0, Relaxed);
        }
        for counter in [
            &self.total_connections,
            &self.rejected_connections,
            &self.idle_kicks,
            &self.read_calls,
            &self.write_calls,
            &self.bytes_read,
            &self.bytes_written,
        ] {
            counter.store(0, Relaxed);
        }
        self.detail.lock().clear();
    }

    /// Counts an authentication attempt (memcached's `auth_cmds`, and
    /// `auth_errors` when it failed).
    pub(crate) fn auth_attempt(&self, ok: bool) {
        bump(&self.counters.auth_cmds);
        if !ok {
            bump(&self.counters.auth_errors);
        }
    }

    /// Logs and counts a failed store call.
    pub(crate) fn store_failed(&self, what: &str, key: &[u8], err: &StoreError) {
        bump(&self.counters.store_errors);
        log::error!(
            "{what} of key {:?} failed: {err}",
            String::from_utf8_lossy(key)
        );
    }

    /// Adds one batch's socket calls and bytes.
    pub(crate) fn add_io(&self, reads: u64, bytes_read: u64, writes: u64, bytes_written: u64) {
        if bytes_read > 0 {
            self.bytes_read.fetch_add(bytes_read, Relaxed);
            self.read_calls.fetch_add(reads, Relaxed);
        }
        if bytes_written > 0 {
            self.bytes_written.fetch_add(bytes_written, Relaxed);
            self.write_calls.fetch_add(writes, Relaxed);
        }
    }

    /// `stats`: the general statistics, in memcached's order and names.
    pub(crate) fn general(&self, store: &Store) -> Vec<StatLine> {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Relaxed);
        let (user, system) = rusage();
        let settings = self.settings.lock().clone();
        let curr = self.curr_connections.load(Relaxed);
        vec![
            line("pid", std::process::id()),
            line("uptime", self.started.elapsed().as_secs()),
            line("time", unix_now()),
            line("version", VERSION),
            line("kvstore_version", KVSTORE_VERSION),
            line("libevent", "none"),
            line("pointer_size", usize::BITS),
            line("rusage_user", user),
            line("rusage_system", system),
            line("max_connections", settings.max_connections),
            line("curr_connections", curr),
            line("total_connections", n(&self.total_connections)),
            line("rejected_connections", n(&self.rejected_connections)),
            line("connection_structures", curr),
            line("cmd_get", n(&c.cmd_get)),
            line("cmd_set", n(&c.cmd_set)),
            line("cmd_flush", n(&c.cmd_flush)),
            line("cmd_touch", n(&c.cmd_touch)),
            line("get_hits", n(&c.get_hits)),
            line("get_misses", n(&c.get_misses)),
            // The store does not tell an expired or flushed item from an
            // absent one: such reads count as get_misses.
            line("get_expired", 0),
            line("get_flushed", 0),
            line("delete_misses", n(&c.delete_misses)),
            line("delete_hits", n(&c.delete_hits)),
            line("incr_misses", n(&c.incr_misses)),
            line("incr_hits", n(&c.incr_hits)),
            line("decr_misses", n(&c.decr_misses)),
            line("decr_hits", n(&c.decr_hits)),
            line("cas_misses", n(&c.cas_misses)),
            line("cas_hits", n(&c.cas_hits)),
            line("cas_badval", n(&c.cas_badval)),
            line("touch_hits", n(&c.touch_hits)),
            line("touch_misses", n(&c.touch_misses)),
            line("store_too_large", n(&c.store_too_large)),
            line("store_no_memory", 0),
            line("store_errors", n(&c.store_errors)),
            line("auth_cmds", n(&c.auth_cmds)),
            line("auth_errors", n(&c.auth_errors)),
            line("idle_kicks", n(&self.idle_kicks)),
            line("bytes_read", n(&self.bytes_read)),
            line("bytes_written", n(&self.bytes_written)),
            line("read_calls", n(&self.read_calls)),
            line("write_calls", n(&self.write_calls)),
            line("limit_maxbytes", store.cache_budget()),
            line("accepting_conns", u8::from(self.accepting.load(Relaxed))),
            // One thread per connection, not a worker pool.
            line("threads", curr),
            line("conn_yields", 0),
            line("bytes", store.cache_bytes()),
            line("curr_items", store.len()),
            line("total_items", n(&c.total_items)),
            // Nothing is evicted from a persistent store.
            line("evictions", 0),
            line("reclaimed", 0),
            // kvstore's own: acknowledged changes not yet applied to the
            // value files (`--durability periodic`), and their bound.
            line("pending_bytes", store.pending_bytes()),
            line("limit_pending_bytes", store.max_pending_bytes()),
        ]
    }

    /// `stats settings`.
    pub(crate) fn settings(&self, store: &Store) -> Vec<StatLine> {
        let s = self.settings.lock().clone();
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        vec![
            line("maxbytes", store.cache_budget()),
            line("maxconns", s.max_connections),
            line("tcpport", s.memcached_port),
            line("udpport", 0),
            line("inter", s.bind),
            line("verbosity", self.verbosity.load(Relaxed)),
            line("evictions", "off"),
            line("domain_socket", "NULL"),
            line("shutdown_command", yes_no(s.shutdown_enabled)),
            line("stat_key_prefix", char::from(PREFIX_DELIMITER)),
            line("detail_enabled", yes_no(self.detail_on.load(Relaxed))),
            line("cas_enabled", "yes"),
            line("tcp_backlog", s.tcp_backlog),
            line("binding_protocol", s.binding_protocol),
            line("auth_enabled_sasl", "no"),
            line("auth_enabled_ascii", "no"),
            line("item_size_max", s.max_value_bytes),
            line("lru_crawler", "no"),
            line("idle_timeout", s.idle_timeout_secs),
            line("flush_enabled", "yes"),
            line("dump_enabled", "yes"),
            line("track_sizes", "no"),
            line("ssl_enabled", "no"),
        ]
    }

    /// `stats items`: every item is in one class, `1` (kvstore has no slab
    /// classes); nothing when the store is empty, as memcached.
    pub(crate) fn items(&self, store: &Store) -> Vec<StatLine> {
        let number = store.len();
        if number == 0 {
            return Vec::new();
        }
        let hits = self.counters.get_hits.load(Relaxed);
        let fields: [(&str, u64); 28] = [
            ("number", number as u64),
            ("number_hot", 0),
            ("number_warm", 0),
            ("number_cold", number as u64),
            ("age_hot", 0),
            ("age_warm", 0),
            ("age", 0),
            ("mem_requested", store.cache_bytes() as u64),
            ("evicted", 0),
            ("evicted_nonzero", 0),
            ("evicted_time", 0),
            ("outofmemory", 0),
            ("tailrepairs", 0),
            ("reclaimed", 0),
            ("expired_unfetched", 0),
            ("evicted_unfetched", 0),
            ("evicted_active", 0),
            ("crawler_reclaimed", 0),
            ("crawler_items_checked", 0),
            ("lrutail_reflocked", 0),
            ("moves_to_cold", 0),
            ("moves_to_warm", 0),
            ("moves_within_lru", 0),
            ("direct_reclaims", 0),
            ("hits_to_hot", 0),
            ("hits_to_warm", 0),
            ("hits_to_cold", hits),
            ("hits_to_temp", 0),
        ];
        fields
            .iter()
            .map(|(name, v)| line(format!("items:1:{name}"), v))
            .collect()
    }

    /// `stats slabs`: one class holding every item, one chunk per item of
    /// up to the largest value.
    pub(crate) fn slabs(&self, store: &Store) -> Vec<StatLine> {
        let number = store.len() as u64;
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Relaxed);
        let max = self.settings.lock().max_value_bytes;
        let mut out = Vec::new();
        if number > 0 {
            let fields: [(&str, u64); 15] = [
                ("chunk_size", max as u64),
                ("chunks_per_page", 1),
                ("total_pages", number),
                ("total_chunks", number),
                ("used_chunks", number),
                ("free_chunks", 0),
                ("free_chunks_end", 0),
                ("get_hits", n(&c.get_hits)),
                ("cmd_set", n(&c.cmd_set)),
                ("delete_hits", n(&c.delete_hits)),
                ("incr_hits", n(&c.incr_hits)),
                ("decr_hits", n(&c.decr_hits)),
                ("cas_hits", n(&c.cas_hits)),
                ("cas_badval", n(&c.cas_badval)),
                ("touch_hits", n(&c.touch_hits)),
            ];
            out.extend(fields.iter().map(|(name, v)| line(format!("1:{name}"), v)));
        }
        out.push(line("active_slabs", u8::from(number > 0)));
        out.push(line("total_malloced", store.cache_bytes()));
        out
    }

    /// `stats sizes`: item sizes are not tracked (memcached's default).
    pub(crate) fn sizes(&self) -> Vec<StatLine> {
        vec![line("sizes_status", "disabled")]
    }

    /// `stats conns`: the listening sockets and every open connection.
    pub(crate) fn conns(&self) -> Vec<StatLine> {
        let now = unix_now();
        let mut out = Vec::new();
        for (fd, addr) in self.listeners.lock().iter() {
            out.push(line(format!("{fd}:addr"), format!("tcp:{addr}")));
            out.push(line(format!("{fd}:state"), "conn_listening"));
        }
        let conns = self.conns.lock();
        let mut by_fd: Vec<&ConnEntry> = conns.values().collect();
        by_fd.sort_by_key(|c| c.fd);
        for c in by_fd {
            let fd = c.fd;
            out.push(line(format!("{fd}:addr"), format!("tcp:{}", c.peer)));
            out.push(line(
                format!("{fd}:listen_addr"),
                format!("tcp:{}", c.listen),
            ));
            out.push(line(format!("{fd}:state"), "conn_parse_cmd"));
            let idle = now.saturating_sub(c.last_active.load(Relaxed));
            out.push(line(format!("{fd}:secs_since_last_cmd"), idle));
        }
        out
    }
}
