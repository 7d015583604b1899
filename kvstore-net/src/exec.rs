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
//! 2. Write a `connection::Handler` whose `step` parses one request, maps
//!    it to [`Command`]s, calls [`Executor::execute`] for each, and encodes
//!    each [`Response`] into the output buffer. Commands with no effect on
//!    the store (quit, noop, a dialect's own framing) stay in the handler.
//! 3. Route connections to it in `server.rs` (a listener of its own, or the
//!    first-byte sniffing of the memcached port, `server::MemcachedProtocol`).
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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kvstore_core::item::unix_now;

use crate::marks::{Mark, Marks};
use kvstore_core::{
    CasOutcome, CounterOutcome, Error as StoreError, Expiry, ItemMeta, ItemRef, Store,
    StoreOutcome, TouchOutcome,
};

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
    /// The general statistics (`stats`, binary STAT without a key).
    Stats,
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
        // Read by the encoders that return it (meta `c`, binary headers).
        #[allow(dead_code)]
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
        // Read by the encoders that return it (meta `c`, binary headers).
        #[allow(dead_code)]
        cas: u64,
    },
    /// The counter's value is not a decimal number that fits 64 bits.
    NonNumeric,
    /// Done (flush, verbosity).
    Ok,
    /// The version string.
    Version(&'static str),
    /// `(name, value)` pairs of a stats group, in order.
    Stats(Vec<(&'static str, String)>),
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

/// The executor: runs [`Command`]s against the store and keeps the
/// statistics derived from them. Shared by every connection.
pub(crate) struct Executor {
    store: Arc<Store>,
    stats: Arc<Stats>,
    locks: Vec<Mutex<()>>,
    marks: Marks,
}

impl Executor {
    /// An executor over `store`, counting into `stats`.
    pub(crate) fn new(store: Arc<Store>, stats: Arc<Stats>) -> Executor {
        Executor {
            store,
            stats,
            locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            marks: Marks::new(),
        }
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
            Command::Stats => deliver(Response::Stats(self.stats.general(&self.store))),
            Command::Version => deliver(Response::Version(VERSION)),
            Command::Verbosity { level } => {
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

/// Server-wide statistics: connection counters kept by the server, command
/// counters derived by [`Stats::record`] from what was executed.
#[derive(Debug)]
pub(crate) struct Stats {
    /// When the server started.
    pub started: Instant,
    /// The connection limit.
    pub max_connections: usize,
    /// Open connections.
    pub curr_connections: AtomicUsize,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Connections refused over the limit.
    pub rejected_connections: AtomicU64,
    /// `read` calls on client sockets.
    pub read_calls: AtomicU64,
    /// `write` calls on client sockets (one per batch of pipelined
    /// requests, unless a reply is larger than the flush threshold).
    pub write_calls: AtomicU64,
    /// Bytes read from clients.
    pub bytes_read: AtomicU64,
    /// Bytes written to clients.
    pub bytes_written: AtomicU64,
    counters: Counters,
}

/// The counters [`Stats::record`] derives from executed commands; reset by
/// `stats reset`.
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
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Stats {
    /// Fresh statistics for a server with this connection limit.
    pub(crate) fn new(max_connections: usize) -> Stats {
        Stats {
            started: Instant::now(),
            max_connections,
            curr_connections: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            read_calls: AtomicU64::new(0),
            write_calls: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// Counts one executed command by its response. The only place where
    /// command counters change.
    fn record(&self, cmd: &Command<'_>, resp: &Response<'_>) {
        let c = &self.counters;
        match cmd {
            Command::Get { touch, .. } => {
                bump(&c.cmd_get);
                if touch.is_some() {
                    bump(&c.cmd_touch);
                }
                match resp {
                    Response::Hit(_) => {
                        bump(&c.get_hits);
                        if touch.is_some() {
                            bump(&c.touch_hits);
                        }
                    }
                    Response::Miss => {
                        bump(&c.get_misses);
                        if touch.is_some() {
                            bump(&c.touch_misses);
                        }
                    }
                    _ => {}
                }
            }
            Command::Store { cas, mode, .. } => {
                bump(&c.cmd_set);
                let checked = cas.is_some() && *mode != StoreMode::Add;
                match resp {
                    Response::Stored { .. } => {
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
            }
            Command::StoreTooLarge { .. } => {
                bump(&c.cmd_set);
                bump(&c.store_too_large);
            }
            Command::Delete { .. } => match resp {
                Response::Deleted => bump(&c.delete_hits),
                Response::NotFound => bump(&c.delete_misses),
                _ => {}
            },
            Command::Counter { incr, .. } => {
                let (hits, misses) = if *incr {
                    (&c.incr_hits, &c.incr_misses)
                } else {
                    (&c.decr_hits, &c.decr_misses)
                };
                match resp {
                    Response::Counter { .. } => bump(hits),
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
            // Counted as the text `get`/`gat` it replaces.
            Command::MetaGet { touch, .. } => {
                bump(&c.cmd_get);
                if touch.is_some() {
                    bump(&c.cmd_touch);
                }
                match resp {
                    Response::MetaHit { .. } => {
                        bump(&c.get_hits);
                        if touch.is_some() {
                            bump(&c.touch_hits);
                        }
                    }
                    Response::Miss => {
                        bump(&c.get_misses);
                        if touch.is_some() {
                            bump(&c.touch_misses);
                        }
                    }
                    _ => {}
                }
            }
            Command::MetaStore { cas, mode, .. } => {
                bump(&c.cmd_set);
                let checked = cas.is_some() && *mode != StoreMode::Add;
                match resp {
                    Response::MetaStored { .. } => {
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
            }
            Command::MetaDelete { .. } => match resp {
                Response::Deleted => bump(&c.delete_hits),
                Response::NotFound | Response::Exists => bump(&c.delete_misses),
                _ => {}
            },
            Command::MetaArithmetic { incr, .. } => {
                let (hits, misses) = if *incr {
                    (&c.incr_hits, &c.incr_misses)
                } else {
                    (&c.decr_hits, &c.decr_misses)
                };
                match resp {
                    Response::MetaCounter { .. } => bump(hits),
                    Response::NotFound => bump(misses),
                    _ => {}
                }
            }
            Command::Stats
            | Command::Version
            | Command::Verbosity { .. }
            | Command::MetaDebug { .. } => {}
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

    /// The general statistics, in memcached's order where the field exists
    /// there.
    pub(crate) fn general(&self, store: &Store) -> Vec<(&'static str, String)> {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Relaxed).to_string();
        vec![
            ("pid", std::process::id().to_string()),
            ("uptime", self.started.elapsed().as_secs().to_string()),
            ("time", unix_now().to_string()),
            ("version", VERSION.to_string()),
            ("kvstore_version", KVSTORE_VERSION.to_string()),
            ("pointer_size", usize::BITS.to_string()),
            (
                "curr_connections",
                self.curr_connections.load(Relaxed).to_string(),
            ),
            ("total_connections", n(&self.total_connections)),
            ("rejected_connections", n(&self.rejected_connections)),
            ("max_connections", self.max_connections.to_string()),
            ("cmd_get", n(&c.cmd_get)),
            ("cmd_set", n(&c.cmd_set)),
            ("cmd_flush", n(&c.cmd_flush)),
            ("cmd_touch", n(&c.cmd_touch)),
            ("get_hits", n(&c.get_hits)),
            ("get_misses", n(&c.get_misses)),
            ("delete_hits", n(&c.delete_hits)),
            ("delete_misses", n(&c.delete_misses)),
            ("incr_hits", n(&c.incr_hits)),
            ("incr_misses", n(&c.incr_misses)),
            ("decr_hits", n(&c.decr_hits)),
            ("decr_misses", n(&c.decr_misses)),
            ("cas_hits", n(&c.cas_hits)),
            ("cas_misses", n(&c.cas_misses)),
            ("cas_badval", n(&c.cas_badval)),
            ("touch_hits", n(&c.touch_hits)),
            ("touch_misses", n(&c.touch_misses)),
            ("store_too_large", n(&c.store_too_large)),
            ("store_errors", n(&c.store_errors)),
            ("bytes_read", n(&self.bytes_read)),
            ("bytes_written", n(&self.bytes_written)),
            ("read_calls", n(&self.read_calls)),
            ("write_calls", n(&self.write_calls)),
            ("curr_items", store.len().to_string()),
            ("total_items", n(&c.total_items)),
        ]
    }
}
