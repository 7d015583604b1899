//! The executor: one place where every dialect's requests meet the store.
//!
//! A request goes through four steps, and only the first and the last
//! belong to a dialect:
//!
//! ```text
//! bytes --parse--> dialect request --map--> Command --execute--> Response --encode--> bytes
//!        (protocol::<dialect>)       (handler)         (Executor)           (handler)
//! ```
//!
//! - **parse** is a pure function over the buffered bytes
//!   (`protocol::seed`, `protocol::memcached`, and so on): a request, "need
//!   more", or a rejection with its reply.
//! - **map** turns one request into one or more [`Command`]s (a text `get`
//!   of ten keys is ten [`Command::Get`]s); what only the dialect needs to
//!   answer (`noreply`, whether to print the cas, an opaque) stays in the
//!   handler and never reaches the executor.
//! - **execute** ([`Executor::execute`]) runs the command against the
//!   store and hands a typed [`Response`] to a sink. A hit borrows the
//!   cached value ([`ItemRef`]), so a `get` is encoded straight from the
//!   cache into the output buffer, with no copy.
//! - **encode** appends the dialect's bytes for that response.
//!
//! Statistics are derived here, once, from the command and its response
//! ([`Stats::record`]): no handler counts anything by hand, so every
//! dialect's traffic shows up in `stats` the same way.
//!
//! ## Adding a dialect
//!
//! 1. Write the parser in `protocol/<dialect>.rs` (pure, no sockets; the
//!    same properties and fuzz target as the others).
//! 2. Write its `connection::Handler` in `handler/<dialect>.rs`: `step`
//!    parses one request, maps it to [`Command`]s, calls
//!    [`Executor::execute`] for each, and encodes each [`Response`] into
//!    the output buffer (`handler/text.rs` is the model). Commands with no
//!    effect on the store (quit, noop, a dialect's own framing) stay in
//!    the handler; `Context::batch_done` keeps the socket figures.
//! 3. Route connections to it: the binary protocol is picked on the
//!    memcached port by a connection's first byte (`handler::McPortHandler`
//!    hands the connection to `handler::BinaryHandler`); the meta protocol
//!    shares the text handler's connections (its commands start with `m`);
//!    another dialect gets a listener in `server.rs`.
//!
//! ## How the memcached dialects map
//!
//! - Text: `get`/`gets` are [`Command::Get`] per key, `gat`/`gats` the same
//!   with `touch`; `cas` is [`Command::Store`] with `mode: Set` and `cas`;
//!   a value over the limit is [`Command::StoreTooLarge`] (`drop_old` only
//!   for `set`).
//! - Binary: GET/GETK/GETQ/GETKQ are [`Command::Get`] (the key echo and the
//!   quiet miss are the encoder's business); SET/ADD/REPLACE/APPEND/PREPEND
//!   are [`Command::Store`] with `cas` when the header's cas is non-zero;
//!   DELETE is [`Command::Delete`] with its cas; INCREMENT/DECREMENT are
//!   [`Command::Counter`] with `initial` unless the expiry is `0xffffffff`
//!   ([`Response::Counter`] carries the new cas for the header);
//!   GAT/GATK and their quiet forms are [`Command::Get`] with `touch`, and
//!   so is TOUCH (memcached answers it with the item's flags and cas, the
//!   value left out); FLUSH is [`Command::Flush`]; VERSION and STAT (with
//!   or without a group key) are [`Command::Version`] and
//!   [`Command::Stats`]; a storage packet over the value limit is
//!   [`Command::StoreTooLarge`] (`drop_old` for SET/SETQ). NOOP, QUIT, the
//!   quiet variants' silence and SASL stay in the handler
//!   (`handler/binary.rs`).
//! - Meta: `mg` is [`Command::Get`] (`T` sets `touch`); the flags it
//!   returns (`c`, `f`, `s`, `t` from [`ItemRef::expiry`], `k`, `O`) are
//!   the encoder's; `ms` is [`Command::Store`] with its mode and `C`;
//!   `md` is [`Command::Delete`]; `ma` is [`Command::Counter`] (`N`/`J`
//!   give `initial`); `mn` stays in the handler. What the core does not
//!   keep (stale marks, win tokens, last access) belongs in the executor
//!   as per-key state under [`KEY_LOCKS`], so that every dialect sees it.
//!
//! ## Atomicity
//!
//! The core has atomic primitives for set, add, replace, append, prepend,
//! compare-and-swap, incr/decr, touch and delete, but not for every
//! combination the memcached dialects can ask for (a delete, an append or
//! an incr that must match a cas, an incr that creates a missing counter).
//! The executor serializes its writes to a key through its own striped
//! locks ([`KEY_LOCKS`]); a combined command reads, checks and writes
//! under that lock, so it is atomic with respect to every other client of
//! the server. (Code that writes to the same [`Store`] directly through the
//! library, in the same process, bypasses these locks.)

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use kvstore_core::{
    CasOutcome, CounterOutcome, Error as StoreError, Expiry, ItemMeta, ItemRef, ScanCursor, Store,
    StoreOutcome, TouchOutcome,
};

pub(crate) use crate::stats::{StatLine, Stats};

/// Keys per chunk of [`Executor::for_each_item`].
pub(crate) const SCAN_CHUNK: usize = 4096;

/// Why [`Executor::for_each_item`] stopped early.
#[derive(Debug)]
pub(crate) enum ScanError<E> {
    /// The store failed.
    Store(StoreError),
    /// The visitor failed.
    Visit(E),
}

/// Number of striped key locks of the executor.
pub(crate) const KEY_LOCKS: usize = 256;

/// How a storage command combines the new data with the current item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key is absent.
    Add,
    /// Store only if the key is present.
    Replace,
    /// Add the data after the current value (flags and expiry kept).
    Append,
    /// Add the data before the current value (flags and expiry kept).
    Prepend,
}

/// A typed command, what every dialect's requests map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// Read one key (`get`, `gets`, `mg`, binary GET/GETK...), and with
    /// `touch` also set its expiry (`gat`, `gats`, binary GAT).
    Get {
        /// The key.
        key: &'a [u8],
        /// A new expiry to set on a hit.
        touch: Option<Expiry>,
    },
    /// Store a value (`set`/`add`/`replace`/`append`/`prepend`/`cas`, meta
    /// `ms` with its modes, binary SET/ADD/REPLACE/APPEND/PREPEND).
    Store {
        /// How to combine with the current item.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// The data.
        value: &'a [u8],
        /// Flags and expiry of the new item (ignored by append/prepend,
        /// which keep the item's own).
        meta: ItemMeta,
        /// Store only if the item's cas is this (text `cas`, meta `C`,
        /// binary's non-zero cas). `Add` ignores it (an absent key has no
        /// cas).
        cas: Option<u64>,
    },
    /// A storage command whose value is over the limit: its data was
    /// skipped, not buffered. The dialect says whether the key's current
    /// value goes too (memcached removes it on a refused `set`, so a client
    /// never reads the value it meant to replace; the seed dialect and the
    /// library keep it).
    StoreTooLarge {
        /// The key.
        key: &'a [u8],
        /// Remove the key's current value.
        drop_old: bool,
    },
    /// Remove a key (`delete`, meta `md`, binary DELETE).
    Delete {
        /// The key.
        key: &'a [u8],
        /// Remove only if the item's cas is this.
        cas: Option<u64>,
    },
    /// `incr`/`decr` (meta `ma`, binary INCREMENT/DECREMENT).
    Counter {
        /// The key.
        key: &'a [u8],
        /// Add (else subtract, stopping at 0).
        incr: bool,
        /// The amount.
        delta: u64,
        /// Create a missing counter with this value and metadata (binary's
        /// initial value, meta's `N` autovivify) instead of answering
        /// "not found".
        initial: Option<(u64, ItemMeta)>,
        /// Change only if the item's cas is this.
        cas: Option<u64>,
    },
    /// Set a new expiry (`touch`, binary TOUCH, meta `mg` with `T` only).
    Touch {
        /// The key.
        key: &'a [u8],
        /// The new expiry.
        expiry: Expiry,
    },
    /// Remove every key now or after a delay (`flush_all`, binary FLUSH).
    Flush {
        /// Seconds from now; 0 is now.
        delay_secs: u64,
    },
    /// A group of statistics (`stats [<group>]`, binary STAT with or
    /// without a key).
    Stats(StatsGroup),
    /// `cache_memlimit <megabytes>`: sets the value cache's budget.
    CacheMemlimit {
        /// The new budget in MiB.
        megabytes: u64,
    },
    /// `shutdown`: stops the server, if it was started with shutdown
    /// enabled.
    Shutdown,
    /// The server's version (`version`, binary VERSION, meta `me`-less
    /// probes).
    Version,
    /// `verbosity <level>`: sets the log level of the server.
    Verbosity {
        /// memcached's level: 0 warnings, 1 info, 2 debug, 3+ trace.
        level: u64,
    },
}

/// The groups of `stats <group>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatsGroup {
    /// `stats`: the general statistics.
    General,
    /// `stats settings`: the configuration.
    Settings,
    /// `stats items`: per item class.
    Items,
    /// `stats slabs`: per slab class.
    Slabs,
    /// `stats sizes`: item size histogram (not tracked).
    Sizes,
    /// `stats conns`: the open connections.
    Conns,
    /// `stats reset`: zero the counters.
    Reset,
    /// `stats detail on`: count per key prefix.
    DetailOn,
    /// `stats detail off`.
    DetailOff,
    /// `stats detail dump`: the per-prefix counts.
    DetailDump,
}

impl Command<'_> {
    /// The key the command is about, if any.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        match *self {
            Command::Get { key, .. }
            | Command::Store { key, .. }
            | Command::StoreTooLarge { key, .. }
            | Command::Delete { key, .. }
            | Command::Counter { key, .. }
            | Command::Touch { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Why a command failed.
#[derive(Debug)]
pub(crate) enum Failure<'a> {
    /// The value (or the result of an append) is over the limit.
    TooLarge,
    /// The key breaks the key rules.
    BadKey,
    /// The store failed (an I/O error, read-only after a failed flush);
    /// already logged and counted.
    Store(&'a StoreError),
}

/// What a command did, handed to the dialect's encoder.
#[derive(Debug)]
pub(crate) enum Response<'a> {
    /// A read found the item.
    Hit(ItemRef<'a>),
    /// A read found nothing (absent or expired).
    Miss,
    /// The value was stored; the item's new cas.
    Stored {
        /// The new cas.
        cas: u64,
    },
    /// An add on a present key, or a replace/append/prepend on an absent
    /// one: nothing changed.
    NotStored,
    /// The cas did not match: nothing changed.
    Exists,
    /// The key is absent (cas store, delete, counter, touch).
    NotFound,
    /// The key was removed.
    Deleted,
    /// The expiry was set.
    Touched,
    /// The counter's new value and the item's new cas.
    Counter {
        /// The new value.
        value: u64,
        /// The new cas.
        cas: u64,
    },
    /// The counter's value is not a decimal number that fits 64 bits.
    NonNumeric,
    /// Done (flush, verbosity).
    Ok,
    /// The version string.
    Version(&'static str),
    /// `(name, value)` pairs of a stats group, in order.
    Stats(Vec<StatLine>),
    /// The counters were zeroed (`stats reset`).
    Reset,
    /// The lines of `stats detail dump`.
    DetailDump(Vec<String>),
    /// `cache_memlimit` below the smallest budget accepted.
    MemlimitTooSmall,
    /// `cache_memlimit` on a server whose cache is disabled.
    CacheDisabled,
    /// `shutdown` on a server started without shutdown enabled.
    ShutdownRefused,
    /// The shutdown was started: close the connection.
    ShuttingDown,
    /// The command failed.
    Failed(Failure<'a>),
}

/// The memcached-compatible version the server reports: clients and tools
/// (libmemcached, pymemcache) parse `VERSION <major>.<minor>.<micro>` and
/// refuse a major version 0, so the server reports the memcached protocol
/// level it implements; kvstore's own version is the `kvstore_version`
/// field of `stats`.
pub(crate) const VERSION: &str = "1.6.18";

/// kvstore's own version (`STAT kvstore_version`).
pub(crate) const KVSTORE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The smallest `cache_memlimit`, in MiB (memcached's own floor).
pub(crate) const MIN_MEMLIMIT_MB: u64 = 8;

/// Starts the server's shutdown (for `shutdown`).
pub(crate) type ShutdownHook = Box<dyn Fn() + Send + Sync>;

/// The executor: runs [`Command`]s against the store and keeps the
/// statistics derived from them. Shared by every connection.
pub(crate) struct Executor {
    store: Arc<Store>,
    stats: Arc<Stats>,
    locks: Vec<Mutex<()>>,
    shutdown: OnceLock<ShutdownHook>,
}

impl Executor {
    /// An executor over `store`, counting into `stats`.
    pub(crate) fn new(store: Arc<Store>, stats: Arc<Stats>) -> Executor {
        Executor {
            store,
            stats,
            locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            shutdown: OnceLock::new(),
        }
    }

    /// Sets what `shutdown` runs (once; later calls are ignored).
    pub(crate) fn on_shutdown(&self, hook: ShutdownHook) {
        let _ = self.shutdown.set(hook);
    }

    /// The statistics.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    fn key_lock(&self, key: &[u8]) -> MutexGuard<'_, ()> {
        // FNV-1a: cheap and spreads short keys well enough for striping.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let lock = &self.locks[(h as usize) % self.locks.len()];
        // A poisoned lock guards no data: the store holds the state.
        lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `cmd` and hands its response to `sink` (exactly once). The
    /// statistics are updated before `sink` runs.
    pub(crate) fn execute(&self, cmd: &Command<'_>, sink: &mut dyn FnMut(Response<'_>)) {
        let mut deliver = |resp: Response<'_>| {
            self.stats.record(cmd, &resp);
            sink(resp);
        };
        match *cmd {
            Command::Get { key, touch: None } => {
                let found = self.store.get_item_with(key, |item| {
                    deliver(Response::Hit(item));
                });
                match found {
                    Ok(Some(())) => {}
                    Ok(None) => deliver(Response::Miss),
                    Err(e) => deliver(self.failed("get", key, &e)),
                }
            }
            Command::Get {
                key,
                touch: Some(expiry),
            } => {
                let _g = self.key_lock(key);
                match self.store.get_and_touch(key, expiry) {
                    Ok(Some(item)) => deliver(Response::Hit(ItemRef {
                        value: &item.value,
                        flags: item.flags,
                        expiry: item.expiry,
                        cas: item.cas,
                    })),
                    Ok(None) => deliver(Response::Miss),
                    Err(e) => deliver(self.failed("gat", key, &e)),
                }
            }
            Command::Store {
                mode,
                key,
                value,
                meta,
                cas,
            } => {
                let _g = self.key_lock(key);
                match self.store_value(mode, key, value, meta, cas) {
                    Ok(resp) => deliver(resp),
                    Err(e) => deliver(self.failed("store", key, &e)),
                }
            }
            Command::StoreTooLarge { key, drop_old } => {
                if drop_old {
                    let _g = self.key_lock(key);
                    if let Err(e) = self.store.delete(key) {
                        // The refusal is the reply; the failed removal is
                        // logged and counted.
                        self.stats.store_failed("delete", key, &e);
                    }
                }
                deliver(Response::Failed(Failure::TooLarge));
            }
            Command::Delete { key, cas } => {
                let _g = self.key_lock(key);
                match self.delete(key, cas) {
                    Ok(resp) => deliver(resp),
                    Err(e) => deliver(self.failed("delete", key, &e)),
                }
            }
            Command::Counter {
                key,
                incr,
                delta,
                initial,
                cas,
            } => {
                let _g = self.key_lock(key);
                match self.counter(key, incr, delta, initial, cas) {
                    Ok(resp) => deliver(resp),
                    Err(e) => deliver(self.failed("incr/decr", key, &e)),
                }
            }
            Command::Touch { key, expiry } => {
                let _g = self.key_lock(key);
                match self.store.touch(key, expiry) {
                    Ok(TouchOutcome::Touched) => deliver(Response::Touched),
                    Ok(TouchOutcome::NotFound) => deliver(Response::NotFound),
                    Err(e) => deliver(self.failed("touch", key, &e)),
                }
            }
            Command::Flush { delay_secs } => {
                let result = if delay_secs == 0 {
                    self.store.clear()
                } else {
                    self.store.clear_after(Duration::from_secs(delay_secs))
                };
                match result {
                    Ok(()) => deliver(Response::Ok),
                    Err(e) => deliver(self.failed("flush_all", b"", &e)),
                }
            }
            Command::Stats(group) => deliver(self.stats_group(group)),
            Command::CacheMemlimit { megabytes } => {
                if megabytes < MIN_MEMLIMIT_MB {
                    deliver(Response::MemlimitTooSmall)
                } else {
                    let bytes =
                        usize::try_from(megabytes.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
                    if self.store.set_cache_budget(bytes) {
                        deliver(Response::Ok)
                    } else {
                        deliver(Response::CacheDisabled)
                    }
                }
            }
            Command::Shutdown => match self.shutdown.get() {
                Some(hook) if self.stats.shutdown_enabled() => {
                    log::warn!("shutdown requested by a client");
                    hook();
                    deliver(Response::ShuttingDown)
                }
                _ => deliver(Response::ShutdownRefused),
            },
            Command::Version => deliver(Response::Version(VERSION)),
            Command::Verbosity { level } => {
                self.stats.verbosity.store(level, Relaxed);
                log::set_max_level(match level {
                    0 => log::LevelFilter::Warn,
                    1 => log::LevelFilter::Info,
                    2 => log::LevelFilter::Debug,
                    _ => log::LevelFilter::Trace,
                });
                deliver(Response::Ok)
            }
        }
    }

    fn stats_group(&self, group: StatsGroup) -> Response<'static> {
        let stats = &self.stats;
        let store = &*self.store;
        Response::Stats(match group {
            StatsGroup::General => stats.general(store),
            StatsGroup::Settings => stats.settings(store),
            StatsGroup::Items => stats.items(store),
            StatsGroup::Slabs => stats.slabs(store),
            StatsGroup::Sizes => stats.sizes(),
            StatsGroup::Conns => stats.conns(),
            StatsGroup::Reset => {
                stats.reset();
                return Response::Reset;
            }
            StatsGroup::DetailOn | StatsGroup::DetailOff => {
                stats.set_detail(group == StatsGroup::DetailOn);
                return Response::Ok;
            }
            StatsGroup::DetailDump => return Response::DetailDump(stats.detail_dump()),
        })
    }

    /// Calls `visit` with every item of the store, in chunks of
    /// [`SCAN_CHUNK`] keys, so that memory stays bounded whatever the
    /// store's size (`stats cachedump`, `lru_crawler metadump`). Keys
    /// removed or expired during the walk are skipped. Stops at the first
    /// error `visit` returns.
    pub(crate) fn for_each_item<E>(
        &self,
        mut visit: impl FnMut(&[u8], ItemRef<'_>) -> Result<(), E>,
    ) -> Result<(), ScanError<E>> {
        let mut cursor = Some(ScanCursor::start());
        while let Some(c) = cursor {
            let (keys, next) = self
                .store
                .scan_keys(&c, SCAN_CHUNK)
                .map_err(ScanError::Store)?;
            for key in &keys {
                let mut result = Ok(());
                let found = self
                    .store
                    .get_item_with(key, |item| result = visit(key, item));
                match found {
                    Ok(_) => result.map_err(ScanError::Visit)?,
                    // Removed or refused between the scan and the read.
                    Err(StoreError::KeyTooLong { .. } | StoreError::InvalidKey { .. }) => {}
                    Err(e) => return Err(ScanError::Store(e)),
                }
            }
            cursor = next;
        }
        Ok(())
    }

    /// A failed store call as a response: limits are the client's
    /// mistake; anything else is logged and counted.
    fn failed<'e>(&self, what: &str, key: &[u8], err: &'e StoreError) -> Response<'e> {
        Response::Failed(match err {
            StoreError::ValueTooLarge { .. } => Failure::TooLarge,
            StoreError::KeyTooLong { .. } | StoreError::InvalidKey { .. } => Failure::BadKey,
            _ => {
                self.stats.store_failed(what, key, err);
                Failure::Store(err)
            }
        })
    }

    /// The current cas of `key`, `None` if absent. Called with the key's
    /// lock held.
    fn current_cas(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        self.store.get_item_with(key, |item| item.cas)
    }

    fn store_value(
        &self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        meta: ItemMeta,
        cas: Option<u64>,
    ) -> Result<Response<'static>, StoreError> {
        let stored = |o: StoreOutcome| match o {
            StoreOutcome::Stored { cas } => Response::Stored { cas },
            StoreOutcome::NotStored => Response::NotStored,
        };
        if let (Some(expected), StoreMode::Set) = (cas, mode) {
            return Ok(
                match self.store.compare_and_swap(key, value, meta, expected)? {
                    CasOutcome::Stored { cas } => Response::Stored { cas },
                    CasOutcome::Exists => Response::Exists,
                    CasOutcome::NotFound => Response::NotFound,
                },
            );
        }
        if let (Some(expected), StoreMode::Replace | StoreMode::Append | StoreMode::Prepend) =
            (cas, mode)
        {
            match self.current_cas(key)? {
                None => return Ok(Response::NotFound),
                Some(current) if current != expected => return Ok(Response::Exists),
                Some(_) => {}
            }
        }
        Ok(match mode {
            StoreMode::Set => Response::Stored {
                cas: self.store.set_with(key, value, meta)?,
            },
            StoreMode::Add => stored(self.store.add(key, value, meta)?),
            StoreMode::Replace => stored(self.store.replace(key, value, meta)?),
            StoreMode::Append => stored(self.store.append(key, value)?),
            StoreMode::Prepend => stored(self.store.prepend(key, value)?),
        })
    }

    fn delete(&self, key: &[u8], cas: Option<u64>) -> Result<Response<'static>, StoreError> {
        if let Some(expected) = cas {
            match self.current_cas(key)? {
                None => return Ok(Response::NotFound),
                Some(current) if current != expected => return Ok(Response::Exists),
                Some(_) => {}
            }
        }
        Ok(if self.store.delete(key)? {
            Response::Deleted
        } else {
            Response::NotFound
        })
    }

    fn counter(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        initial: Option<(u64, ItemMeta)>,
        cas: Option<u64>,
    ) -> Result<Response<'static>, StoreError> {
        if let Some(expected) = cas {
            match self.current_cas(key)? {
                None if initial.is_none() => return Ok(Response::NotFound),
                Some(current) if current != expected => return Ok(Response::Exists),
                _ => {}
            }
        }
        let outcome = if incr {
            self.store.incr(key, delta)?
        } else {
            self.store.decr(key, delta)?
        };
        Ok(match (outcome, initial) {
            (CounterOutcome::Value(value), _) => match self.current_cas(key)? {
                Some(cas) => Response::Counter { value, cas },
                // Expired between the two calls.
                None => Response::NotFound,
            },
            (CounterOutcome::NotFound, Some((value, meta))) => {
                let cas = self.store.set_with(key, value.to_string(), meta)?;
                Response::Counter { value, cas }
            }
            (CounterOutcome::NotFound, None) => Response::NotFound,
            (CounterOutcome::NotNumeric, _) => Response::NonNumeric,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `cmd` and describes its response (`Hit` with the value).
    fn run(exec: &Executor, cmd: Command<'_>) -> String {
        let mut got = String::new();
        exec.execute(&cmd, &mut |resp| {
            got = match resp {
                Response::Hit(item) => format!("Hit({})", String::from_utf8_lossy(item.value)),
                Response::Stored { .. } => "Stored".into(),
                Response::Counter { value, .. } => format!("Counter({value})"),
                other => format!("{other:?}"),
            }
        });
        got
    }

    fn executor() -> (tempfile::TempDir, Executor) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(tmp.path()).unwrap());
        (tmp, Executor::new(store, Arc::new(Stats::new())))
    }

    fn store<'a>(mode: StoreMode, key: &'a [u8], value: &'a [u8], cas: Option<u64>) -> Command<'a> {
        Command::Store {
            mode,
            key,
            value,
            meta: ItemMeta::default(),
            cas,
        }
    }

    fn cas_of(exec: &Executor, key: &[u8]) -> u64 {
        let mut cas = 0;
        exec.execute(&Command::Get { key, touch: None }, &mut |resp| {
            if let Response::Hit(item) = resp {
                cas = item.cas;
            }
        });
        cas
    }

    #[test]
    fn cas_applies_to_every_store_mode_and_to_delete() {
        let (_tmp, exec) = executor();
        assert_eq!(
            run(&exec, store(StoreMode::Set, b"k", b"a", None)),
            "Stored"
        );
        let cas = cas_of(&exec, b"k");
        for mode in [
            StoreMode::Set,
            StoreMode::Replace,
            StoreMode::Append,
            StoreMode::Prepend,
        ] {
            assert_eq!(run(&exec, store(mode, b"k", b"x", Some(cas + 1))), "Exists");
            assert_eq!(run(&exec, store(mode, b"nope", b"x", Some(1))), "NotFound");
        }
        assert_eq!(
            run(&exec, store(StoreMode::Append, b"k", b"b", Some(cas))),
            "Stored"
        );
        assert_eq!(
            run(
                &exec,
                Command::Get {
                    key: b"k",
                    touch: None
                }
            ),
            "Hit(ab)"
        );
        // Add ignores the cas: an absent key has none.
        assert_eq!(
            run(&exec, store(StoreMode::Add, b"new", b"n", Some(5))),
            "Stored"
        );
        let cas = cas_of(&exec, b"k");
        assert_eq!(
            run(
                &exec,
                Command::Delete {
                    key: b"k",
                    cas: Some(cas + 1)
                }
            ),
            "Exists"
        );
        assert_eq!(
            run(
                &exec,
                Command::Delete {
                    key: b"k",
                    cas: Some(cas)
                }
            ),
            "Deleted"
        );
        assert_eq!(
            run(
                &exec,
                Command::Delete {
                    key: b"k",
                    cas: Some(cas)
                }
            ),
            "NotFound"
        );
    }

    #[test]
    fn counters_create_with_an_initial_value_and_check_the_cas() {
        let (_tmp, exec) = executor();
        let counter = |delta, initial, cas| Command::Counter {
            key: b"n",
            incr: true,
            delta,
            initial,
            cas,
        };
        assert_eq!(run(&exec, counter(5, None, None)), "NotFound");
        let meta = ItemMeta::default();
        // A missing counter takes the initial value, not initial + delta.
        assert_eq!(
            run(&exec, counter(5, Some((10, meta)), None)),
            "Counter(10)"
        );
        assert_eq!(
            run(&exec, counter(5, Some((10, meta)), None)),
            "Counter(15)"
        );
        let cas = cas_of(&exec, b"n");
        assert_eq!(run(&exec, counter(1, None, Some(cas + 1))), "Exists");
        let mut new_cas = 0;
        exec.execute(&counter(1, None, Some(cas)), &mut |resp| {
            if let Response::Counter { value, cas } = resp {
                assert_eq!(value, 16);
                new_cas = cas;
            }
        });
        assert_eq!(new_cas, cas_of(&exec, b"n"));
        assert_ne!(new_cas, cas);
        assert_eq!(
            run(&exec, store(StoreMode::Set, b"t", b"text", None)),
            "Stored"
        );
        let decr = Command::Counter {
            key: b"t",
            incr: false,
            delta: 1,
            initial: None,
            cas: None,
        };
        assert_eq!(run(&exec, decr), "NonNumeric");
    }

    #[test]
    fn statistics_come_from_what_was_executed() {
        let (_tmp, exec) = executor();
        run(&exec, store(StoreMode::Set, b"k", b"v", None));
        run(
            &exec,
            Command::Get {
                key: b"k",
                touch: None,
            },
        );
        run(
            &exec,
            Command::Get {
                key: b"x",
                touch: None,
            },
        );
        run(&exec, store(StoreMode::Set, b"k", b"v", Some(1)));
        run(
            &exec,
            Command::StoreTooLarge {
                key: b"k",
                drop_old: true,
            },
        );
        assert_eq!(
            run(
                &exec,
                Command::Get {
                    key: b"k",
                    touch: None
                }
            ),
            "Miss"
        );
        let general = |exec: &Executor| {
            let mut lines = Vec::new();
            exec.execute(&Command::Stats(StatsGroup::General), &mut |resp| {
                if let Response::Stats(l) = resp {
                    lines = l;
                }
            });
            lines
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        };
        let stats = general(&exec);
        for (name, want) in [
            ("cmd_get", "3"),
            ("get_hits", "1"),
            ("get_misses", "2"),
            ("cmd_set", "3"),
            ("cas_badval", "1"),
            ("store_too_large", "1"),
            ("total_items", "1"),
        ] {
            assert_eq!(stats[name], want, "{name}");
        }
        assert_eq!(run(&exec, Command::Stats(StatsGroup::Reset)), "Reset");
        assert_eq!(general(&exec)["cmd_get"], "0");
    }
}
