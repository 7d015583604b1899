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
//! - Meta (`handler/meta.rs`): `mg` is [`Command::MetaGet`] (`T` sets
//!   `touch`, `N` `vivify`, `R` `recache`, `u` clears `bump`), `me`
//!   [`Command::MetaDebug`], `ms` [`Command::MetaStore`] with its mode,
//!   `C`, `I` and `N`, and an `ms` over the limit
//!   [`Command::StoreTooLarge`] with `drop_old`; `md` is
//!   [`Command::MetaDelete`] (`I` and `x` keep the item), `ma`
//!   [`Command::MetaArithmetic`] (`N`/`J` give `initial`). The flags a
//!   reply returns (`c`, `f`, `s`, `t` from [`ItemRef::expiry`], `k`, `O`,
//!   `b`, `q`) are the encoder's; `mn` stays in the handler. What the core
//!   does not keep (stale marks, win tokens, fetched, last access) is the
//!   executor's per-key state (`marks.rs`), changed under [`KEY_LOCKS`],
//!   so that every dialect sees it.
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
//!
//! The meta commands (`Command::Meta*`) also read and change the key's
//! marks (`marks.rs`: fetched, last access, stale, recache winner) under
//! the same lock, so an item and its marks change together; every write
//! of another dialect resets the marks of its key.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use kvstore_core::{
    CasOutcome, CounterOutcome, Error as StoreError, Expiry, ItemMeta, ItemRef, ScanCursor, Store,
    StoreOutcome, TouchOutcome,
};

use crate::marks::{Mark, Marks};
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
    /// Meta `mg`: a read that may also touch, create a placeholder on a
    /// miss, and hand out the right to recache (the lease).
    MetaGet {
        /// The key.
        key: &'a [u8],
        /// A new expiry to set on a hit (`T`).
        touch: Option<Expiry>,
        /// On a miss, create an empty item with this expiry and win it
        /// (`N`).
        vivify: Option<Expiry>,
        /// Win the recache if the item expires before this (`R`).
        recache: Option<Expiry>,
        /// Count the access (not `u`).
        bump: bool,
    },
    /// Meta `me`: the item and its marks, changing nothing.
    MetaDebug {
        /// The key.
        key: &'a [u8],
    },
    /// Meta `ms`.
    MetaStore {
        /// How to combine with the current item.
        mode: StoreMode,
        /// The key.
        key: &'a [u8],
        /// The data.
        value: &'a [u8],
        /// Flags and expiry of a new item.
        meta: ItemMeta,
        /// Store only if the item's cas is this (`C`).
        cas: Option<u64>,
        /// `I` with `C`: a cas lower than the item's also stores, and the
        /// new value is marked stale (it keeps the item's expiry and
        /// winner).
        invalidate: bool,
        /// Append/prepend on a miss create the item with this expiry
        /// (`N`).
        vivify: Option<Expiry>,
    },
    /// Meta `md`.
    MetaDelete {
        /// The key.
        key: &'a [u8],
        /// Act only if the item's cas is this (`C`).
        cas: Option<u64>,
        /// `I`: mark stale (new cas, expiry from `expiry`) instead of
        /// removing.
        invalidate: bool,
        /// `x`: replace the value with an empty one with these flags,
        /// keeping the item.
        clear_value: Option<u32>,
        /// `T`: the new expiry, with `I` or `x`.
        expiry: Option<Expiry>,
    },
    /// Meta `ma`.
    MetaArithmetic {
        /// The key.
        key: &'a [u8],
        /// Add (else subtract, stopping at 0).
        incr: bool,
        /// The amount.
        delta: u64,
        /// Create a missing counter with this value and metadata (`N`,
        /// `J`).
        initial: Option<(u64, ItemMeta)>,
        /// Change only if the item's cas is this (`C`).
        cas: Option<u64>,
        /// A new expiry on success (`T`).
        touch: Option<Expiry>,
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
            | Command::Touch { key, .. }
            | Command::MetaGet { key, .. }
            | Command::MetaDebug { key }
            | Command::MetaStore { key, .. }
            | Command::MetaDelete { key, .. }
            | Command::MetaArithmetic { key, .. } => Some(key),
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
    /// A meta read (`mg`, `me`) found the item (or `mg` created it).
    MetaHit {
        /// The item, after the command.
        item: ItemRef<'a>,
        /// Whether it had been read before the command (`h`).
        fetched: bool,
        /// Seconds since its last access before the command (`l`).
        idle_secs: u64,
        /// The recache marks of the reply.
        lease: Lease,
    },
    /// A meta store (`ms`) stored: the new cas and the value's size.
    MetaStored {
        /// The new cas.
        cas: u64,
        /// The stored value's size (after an append or prepend).
        size: usize,
    },
    /// A meta counter (`ma`) changed or was created.
    MetaCounter {
        /// The new value.
        value: u64,
        /// The new cas.
        cas: u64,
        /// The item's expiry.
        expiry: Expiry,
    },
}

/// The recache marks of an `mg` reply (`W`, `X`, `Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Lease {
    /// `W`: this client won the right to recache.
    pub won: bool,
    /// `X`: the item is stale.
    pub stale: bool,
    /// `Z`: another client won it before.
    pub already_won: bool,
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
    marks: Marks,
}

impl Executor {
    /// The store it runs commands on.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// An executor over `store`, counting into `stats`.
    pub(crate) fn new(store: Arc<Store>, stats: Arc<Stats>) -> Executor {
        Executor {
            store,
            stats,
            locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            shutdown: OnceLock::new(),
            marks: Marks::new(),
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
        let h = key_hash(key);
        let lock = &self.locks[(h as usize) % self.locks.len()];
        lock.lock()
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
                    Ok(Some(())) => self.marks.read(key),
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
                    Ok(Some(item)) => {
                        self.marks.read(key);
                        deliver(Response::Hit(ItemRef {
                            value: &item.value,
                            flags: item.flags,
                            expiry: item.expiry,
                            cas: item.cas,
                        }))
                    }
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
                    Ok(resp) => {
                        if let Response::Stored { .. } = resp {
                            self.marks.written(key);
                        }
                        deliver(resp)
                    }
                    Err(e) => deliver(self.failed("store", key, &e)),
                }
            }
            Command::StoreTooLarge { key, drop_old } => {
                if drop_old {
                    let _g = self.key_lock(key);
                    self.marks.remove(key);
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
                    Ok(resp) => {
                        if let Response::Deleted = resp {
                            self.marks.remove(key);
                        }
                        deliver(resp)
                    }
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
                    Ok(resp) => {
                        if let Response::Counter { .. } = resp {
                            self.marks.written(key);
                        }
                        deliver(resp)
                    }
                    Err(e) => deliver(self.failed("incr/decr", key, &e)),
                }
            }
            Command::Touch { key, expiry } => {
                let _g = self.key_lock(key);
                match self.store.touch(key, expiry) {
                    Ok(TouchOutcome::Touched) => {
                        self.marks.read(key);
                        deliver(Response::Touched)
                    }
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
                    Ok(()) => {
                        self.marks.clear();
                        deliver(Response::Ok)
                    }
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
            Command::MetaGet {
                key,
                touch,
                vivify,
                recache,
                bump,
            } => {
                let _g = self.key_lock(key);
                self.marks.activate();
                if let Err(e) = self.meta_get(key, touch, vivify, recache, bump, &mut deliver) {
                    deliver(self.failed("mg", key, &e));
                }
            }
            Command::MetaDebug { key } => {
                self.marks.activate();
                let before = self.marks.get(key);
                let idle_secs = self.marks.idle_secs(&before);
                let found = self.store.get_item_with(key, |item| {
                    deliver(Response::MetaHit {
                        item,
                        fetched: before.fetched,
                        idle_secs,
                        lease: Lease::default(),
                    })
                });
                match found {
                    Ok(Some(())) => {}
                    Ok(None) => deliver(Response::Miss),
                    Err(e) => deliver(self.failed("me", key, &e)),
                }
            }
            Command::MetaStore {
                mode,
                key,
                value,
                meta,
                cas,
                invalidate,
                vivify,
            } => {
                let _g = self.key_lock(key);
                self.marks.activate();
                match self.meta_store(mode, key, value, meta, cas, invalidate, vivify) {
                    Ok(resp) => deliver(resp),
                    Err(e) => deliver(self.failed("ms", key, &e)),
                }
            }
            Command::MetaDelete {
                key,
                cas,
                invalidate,
                clear_value,
                expiry,
            } => {
                let _g = self.key_lock(key);
                self.marks.activate();
                match self.meta_delete(key, cas, invalidate, clear_value, expiry) {
                    Ok(resp) => deliver(resp),
                    Err(e) => deliver(self.failed("md", key, &e)),
                }
            }
            Command::MetaArithmetic {
                key,
                incr,
                delta,
                initial,
                cas,
                touch,
            } => {
                let _g = self.key_lock(key);
                self.marks.activate();
                match self.meta_arithmetic(key, incr, delta, initial, cas, touch) {
                    Ok(resp) => deliver(resp),
                    Err(e) => deliver(self.failed("ma", key, &e)),
                }
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

/// The meta commands. Each runs with the key's lock held, so the item and
/// its marks change together.
impl Executor {
    /// `mg`: read (touching with `T`), or create a placeholder on a miss
    /// (`N`); then work out the lease marks from the item's marks.
    fn meta_get(
        &self,
        key: &[u8],
        touch: Option<Expiry>,
        vivify: Option<Expiry>,
        recache: Option<Expiry>,
        bump: bool,
        deliver: &mut dyn FnMut(Response<'_>),
    ) -> Result<(), StoreError> {
        let before = self.marks.get(key);
        let idle_secs = self.marks.idle_secs(&before);
        // The lease: `Z` if a client won before; else `W` if the item
        // expires before `R`, or is stale.
        let lease_of = |expiry: Expiry| {
            let early = match (expiry, recache) {
                (Expiry::At(at), Some(Expiry::At(limit))) => at < limit,
                _ => false,
            };
            Lease {
                won: !before.won && (early || before.stale),
                stale: before.stale,
                already_won: before.won,
            }
        };
        let mut won = false;
        let found = match touch {
            Some(expiry) => match self.store.get_and_touch(key, expiry)? {
                Some(item) => {
                    let lease = lease_of(item.expiry);
                    won = lease.won;
                    deliver(Response::MetaHit {
                        item: ItemRef {
                            value: &item.value,
                            flags: item.flags,
                            expiry: item.expiry,
                            cas: item.cas,
                        },
                        fetched: before.fetched,
                        idle_secs,
                        lease,
                    });
                    true
                }
                None => false,
            },
            None => self
                .store
                .get_item_with(key, |item| {
                    let lease = lease_of(item.expiry);
                    won = lease.won;
                    deliver(Response::MetaHit {
                        item,
                        fetched: before.fetched,
                        idle_secs,
                        lease,
                    });
                })?
                .is_some(),
        };
        if found {
            let mut after = before;
            after.won |= won;
            if bump {
                after.fetched = true;
                after.last_access = self.marks.now();
            }
            if after != before {
                self.marks.set(key, after);
            }
            return Ok(());
        }
        let Some(expiry) = vivify else {
            self.marks.remove(key);
            deliver(Response::Miss);
            return Ok(());
        };
        let meta = ItemMeta { flags: 0, expiry };
        match self.store.add(key, b"", meta)? {
            StoreOutcome::Stored { cas } => {
                self.marks.set(
                    key,
                    Mark {
                        last_access: self.marks.now(),
                        won: true,
                        ..Mark::default()
                    },
                );
                deliver(Response::MetaHit {
                    item: ItemRef {
                        value: b"",
                        flags: 0,
                        expiry,
                        cas,
                    },
                    fetched: false,
                    idle_secs: 0,
                    lease: Lease {
                        won: true,
                        ..Lease::default()
                    },
                });
            }
            // Written meanwhile by the library in this process (server
            // clients wait for the key lock): a miss for this client.
            StoreOutcome::NotStored => deliver(Response::Miss),
        }
        Ok(())
    }

    /// `ms`: a store with the meta extras (`I` stale stores, `N`
    /// append-vivify, the stored size).
    #[allow(clippy::too_many_arguments)]
    fn meta_store(
        &self,
        mode: StoreMode,
        key: &[u8],
        value: &[u8],
        meta: ItemMeta,
        cas: Option<u64>,
        invalidate: bool,
        vivify: Option<Expiry>,
    ) -> Result<Response<'static>, StoreError> {
        let current = self
            .store
            .get_item_with(key, |item| (item.cas, item.expiry, item.value.len()))?;
        let appending = matches!(mode, StoreMode::Append | StoreMode::Prepend);
        // `I` with an older cas: store over the item, keep its expiry and
        // winner, mark it stale (set and replace modes, as memcached).
        if let (true, Some(expected), Some((now_cas, expiry, _))) = (invalidate, cas, current) {
            if expected < now_cas && matches!(mode, StoreMode::Set | StoreMode::Replace) {
                let before = self.marks.get(key);
                let new_cas = self.store.set_with(
                    key,
                    value,
                    ItemMeta {
                        flags: meta.flags,
                        expiry,
                    },
                )?;
                self.marks.set(
                    key,
                    Mark {
                        last_access: self.marks.now(),
                        stale: true,
                        won: before.won,
                        ..Mark::default()
                    },
                );
                return Ok(Response::MetaStored {
                    cas: new_cas,
                    size: value.len(),
                });
            }
        }
        if let (Some(expiry), true, None) = (vivify, appending, current) {
            let cas = self.store.set_with(
                key,
                value,
                ItemMeta {
                    flags: meta.flags,
                    expiry,
                },
            )?;
            self.marks.written(key);
            return Ok(Response::MetaStored {
                cas,
                size: value.len(),
            });
        }
        // An add ignores the cas (an absent key has none to compare).
        let cas = if mode == StoreMode::Add { None } else { cas };
        Ok(match self.store_value(mode, key, value, meta, cas)? {
            Response::Stored { cas } => {
                self.marks.written(key);
                let size = match (appending, current) {
                    (true, Some((_, _, old))) => old + value.len(),
                    _ => value.len(),
                };
                Response::MetaStored { cas, size }
            }
            other => other,
        })
    }

    /// `md`: delete, or with `I` mark stale, or with `x` empty the value.
    fn meta_delete(
        &self,
        key: &[u8],
        cas: Option<u64>,
        invalidate: bool,
        clear_value: Option<u32>,
        expiry: Option<Expiry>,
    ) -> Result<Response<'static>, StoreError> {
        if !invalidate && clear_value.is_none() {
            let resp = self.delete(key, cas)?;
            if let Response::Deleted = resp {
                self.marks.remove(key);
            }
            return Ok(resp);
        }
        let Some(item) = self.store.get_item(key)? else {
            return Ok(Response::NotFound);
        };
        if cas.is_some_and(|c| c != item.cas) {
            return Ok(Response::Exists);
        }
        let before = self.marks.get(key);
        let (value, flags, expiry) = match clear_value {
            Some(flags) => (&b""[..], flags, expiry.unwrap_or(Expiry::Never)),
            None => (&item.value[..], item.flags, expiry.unwrap_or(item.expiry)),
        };
        // Rewriting the item gives it a new cas, as `I` asks.
        self.store
            .set_with(key, value, ItemMeta { flags, expiry })?;
        self.marks.set(
            key,
            Mark {
                stale: invalidate,
                // A new value clears the marks; a stale mark lets the
                // next reader win the recache.
                won: false,
                ..if clear_value.is_some() {
                    Mark {
                        last_access: self.marks.now(),
                        ..Mark::default()
                    }
                } else {
                    before
                }
            },
        );
        Ok(Response::Deleted)
    }

    /// `ma`: the counter, then `T`, and what `t`/`c` report.
    fn meta_arithmetic(
        &self,
        key: &[u8],
        incr: bool,
        delta: u64,
        initial: Option<(u64, ItemMeta)>,
        cas: Option<u64>,
        touch: Option<Expiry>,
    ) -> Result<Response<'static>, StoreError> {
        let (value, mut cas) = match self.counter(key, incr, delta, initial, cas)? {
            Response::Counter { value, cas } => (value, cas),
            other => return Ok(other),
        };
        self.marks.written(key);
        if let Some(expiry) = touch {
            self.store.touch(key, expiry)?;
        }
        let Some((now_cas, expiry)) = self
            .store
            .get_item_with(key, |item| (item.cas, item.expiry))?
        else {
            // Expired between the calls.
            return Ok(Response::NotFound);
        };
        if touch.is_some() {
            cas = now_cas;
        }
        Ok(Response::MetaCounter { value, cas, expiry })
    }
}

/// FNV-1a of a key (the hash the store names files by): cheap, and spreads
/// short keys well for striping locks and tables.
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    std::hash::Hasher::write(&mut hasher, key);
    std::hash::Hasher::finish(&hasher)
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

    #[test]
    fn meta_commands_count_as_the_text_commands_they_stand_for() {
        let (_tmp, exec) = executor();
        let stats = |exec: &Executor, group| {
            let mut lines = Vec::new();
            exec.execute(&Command::Stats(group), &mut |resp| match resp {
                Response::Stats(l) => lines = l,
                Response::DetailDump(l) => {
                    lines = l.into_iter().map(|l| (l, String::new())).collect()
                }
                _ => {}
            });
            lines
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>()
        };
        run(&exec, Command::Stats(StatsGroup::DetailOn));
        let meta_store = |cas| Command::MetaStore {
            mode: StoreMode::Set,
            key: b"p:k",
            value: b"v",
            meta: ItemMeta::default(),
            cas,
            invalidate: false,
            vivify: None,
        };
        let meta_get = |key, touch| Command::MetaGet {
            key,
            touch,
            vivify: None,
            recache: None,
            bump: true,
        };
        run(&exec, meta_store(None));
        let cas = cas_of(&exec, b"p:k");
        run(&exec, meta_store(Some(cas + 1)));
        run(&exec, meta_store(Some(cas)));
        run(&exec, meta_get(b"p:k", Some(Expiry::Never)));
        run(&exec, meta_get(b"p:x", None));
        run(&exec, Command::MetaDebug { key: b"p:k" });
        let meta_delete = |cas| Command::MetaDelete {
            key: b"p:k",
            cas,
            invalidate: false,
            clear_value: None,
            expiry: None,
        };
        run(&exec, meta_delete(Some(1)));
        run(&exec, meta_delete(None));
        run(
            &exec,
            Command::MetaArithmetic {
                key: b"n",
                incr: false,
                delta: 1,
                initial: None,
                cas: None,
                touch: None,
            },
        );
        let general = stats(&exec, StatsGroup::General);
        for (name, want) in [
            ("cmd_set", "3"),
            ("total_items", "2"),
            ("cas_hits", "1"),
            ("cas_badval", "1"),
            // The cas_of read and the two meta reads; `me` counts nothing.
            ("cmd_get", "3"),
            ("get_hits", "2"),
            ("get_misses", "1"),
            ("cmd_touch", "1"),
            ("touch_hits", "1"),
            ("delete_hits", "1"),
            ("delete_misses", "1"),
            ("decr_misses", "1"),
        ] {
            assert_eq!(general[name], want, "{name}");
        }
        let detail = stats(&exec, StatsGroup::DetailDump);
        assert!(
            detail.contains_key("PREFIX p get 3 hit 2 set 3 del 2"),
            "{detail:?}"
        );
    }
}
