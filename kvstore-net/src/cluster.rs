//! Spreading keys over several servers: the ketama continuum.
//!
//! Keys are mapped to servers the way the memcached ecosystem already does
//! it, so a key lands on the same server whether a client routes it itself
//! or goes through twemproxy (`nutcracker`) or a libmemcached client:
//!
//! - Each server has a *ketama name*: `host:port`, or just `host` when the
//!   port is memcached's default 11211 (libmemcached did that first and
//!   twemproxy copies it), or an explicit name (twemproxy's
//!   `host:port:weight name` form).
//! - A server of weight `w` out of a total `W` over `n` live servers gets
//!   `floor(w / W * 160 / 4 * n) * 4` points (160 with equal weights). Point
//!   group `i` is the MD5 digest of `"<name>-<i>"`; each 16-byte digest gives
//!   4 points, its 4-byte little-endian words.
//! - The points are sorted; a key hashes to a 32-bit value (MD5 by default,
//!   as libmemcached's weighted ketama and twemproxy's `hash: md5`; or
//!   twemproxy's default `fnv1a_64`) and belongs to the first point at or
//!   after that value, wrapping to the first point.
//! - When a server is ejected, the continuum is rebuilt from the live
//!   servers only: with equal weights that just removes the dead server's
//!   points, so its keys move to the next point and nobody else's move.
//!
//! The reference is twemproxy's `src/hashkit/nc_ketama.c` and libmemcached's
//! `update_continuum`; `scripts/cluster-test.sh` checks this code against a
//! running nutcracker in front of real memcached servers and against
//! libmemcached's own routing, and the unit tests below pin server choices
//! computed by libmemcached.
//!
//! [`Cluster`] is the multi-server client built on this: [`McClient`]
//! connections, one per server, keys routed by the continuum, and
//! twemproxy's failover (eject a failing server, retry it later).
//! `docs/CLUSTER.md` tells how to run servers behind nutcracker.
//!
//! # Example
//!
//! ```
//! # use std::sync::Arc;
//! # use kvstore_core::Store;
//! # use kvstore_net::{Server, ServerConfig};
//! use kvstore_net::{Cluster, ClusterOptions, ServerSpec};
//! # let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
//! # let servers: Vec<_> = dirs
//! #     .iter()
//! #     .map(|dir| {
//! #         let store = Arc::new(Store::open(dir.path()).unwrap());
//! #         let config = ServerConfig {
//! #             seed_port: None,
//! #             memcached_port: Some(0),
//! #             ..ServerConfig::default()
//! #         };
//! #         Server::start(store, config).unwrap()
//! #     })
//! #     .collect();
//! # let lines: Vec<String> = servers
//! #     .iter()
//! #     .map(|server| format!("{}:1", server.memcached_addr().unwrap()))
//! #     .collect();
//! // `lines` holds three `host:port:weight` entries, as in nutcracker's
//! // `servers:` list.
//! let specs = lines
//!     .iter()
//!     .map(|line| ServerSpec::parse(line))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mut cluster = Cluster::connect_with(&specs, ClusterOptions::default())?;
//! cluster.set("user:42", "alice")?;
//! assert_eq!(cluster.get("user:42")?, Some(b"alice".to_vec()));
//! // The server twemproxy with the same list would pick:
//! let home = cluster.server_for("user:42").unwrap();
//! assert!(home < 3);
//! # for server in servers {
//! #     server.shutdown().unwrap();
//! # }
//! # Ok::<(), kvstore_net::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::client::{ConnectOptions, Credentials};
use crate::error::{Error, Result};
use crate::mcclient::McClient;
use crate::tls::TlsConnector;

/// Points a server of average weight gets on the continuum.
pub const POINTS_PER_SERVER: u32 = 160;

/// Points taken from one MD5 digest (16 bytes = 4 words of 4 bytes).
pub const POINTS_PER_HASH: u32 = 4;

/// memcached's default port: a server on it is named without the port.
pub const DEFAULT_PORT: u16 = 11211;

/// How a key is turned into a position on the continuum.
///
/// The names are those of twemproxy's `hash:` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyHash {
    /// The first 4 bytes of the key's MD5 digest, little-endian: what
    /// libmemcached's weighted ketama uses, and twemproxy with `hash: md5`.
    #[default]
    Md5,
    /// twemproxy's `fnv1a_64` (its default `hash:`), which is really a
    /// 32-bit FNV-1a run with the 64-bit offset basis and prime truncated to
    /// 32 bits. Key bytes are sign-extended as C's `char` is on x86-64, so
    /// keys with bytes >= 0x80 route as a nutcracker built for x86-64 does.
    Fnv1a64,
}

impl KeyHash {
    /// The 32-bit position of `key` on the continuum.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            KeyHash::Md5 => {
                let digest = Md5::digest(key);
                u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
            }
            KeyHash::Fnv1a64 => {
                const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
                const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
                let mut hash = FNV_64_INIT as u32;
                for &byte in key {
                    // C: `(uint32_t)key[x]` with a signed `char`.
                    hash ^= byte as i8 as i32 as u32;
                    hash = hash.wrapping_mul(FNV_64_PRIME as u32);
                }
                hash
            }
        }
    }

    /// The name twemproxy's `hash:` setting uses for this function.
    pub fn name(self) -> &'static str {
        match self {
            KeyHash::Md5 => "md5",
            KeyHash::Fnv1a64 => "fnv1a_64",
        }
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyHash {
    type Err = Error;

    /// Parses a twemproxy `hash:` name (`md5` or `fnv1a_64`).
    fn from_str(s: &str) -> Result<KeyHash> {
        match s {
            "md5" => Ok(KeyHash::Md5),
            "fnv1a_64" => Ok(KeyHash::Fnv1a64),
            other => Err(Error::InvalidRequest(format!(
                "unknown key hash {other:?}: expected md5 or fnv1a_64"
            ))),
        }
    }
}

/// The name a server has on the continuum when none is given: `host` on
/// port 11211, `host:port` on any other port (as libmemcached and
/// twemproxy name it).
pub fn ketama_name(host: &str, port: u16) -> String {
    if port == DEFAULT_PORT {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// One server as the continuum sees it: a name and a weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    /// The ketama name (see [`ketama_name`]); it alone decides the server's
    /// points, so the same name gives the same keys on every client.
    pub name: String,
    /// Relative share of keys, at least 1 (twemproxy's `host:port:weight`).
    pub weight: u32,
}

impl Node {
    /// A node named `name` with `weight`.
    pub fn new(name: impl Into<String>, weight: u32) -> Node {
        Node {
            name: name.into(),
            weight,
        }
    }
}

/// One server of a cluster: where to connect and its place on the continuum.
///
/// Written as twemproxy writes a `servers:` entry, `host:port:weight` with an
/// optional ` name`, so the list in `deploy/nutcracker.yml` can be given to
/// [`Cluster`] unchanged and both route every key alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerSpec {
    /// Host name or IP address.
    pub host: String,
    /// TCP port of the memcached dialect.
    pub port: u16,
    /// Relative share of keys, at least 1.
    pub weight: u32,
    /// Name on the continuum: given, or [`ketama_name`] of host and port.
    pub name: String,
}

impl ServerSpec {
    /// A server at `host:port` with `weight` and the default ketama name.
    pub fn new(host: impl Into<String>, port: u16, weight: u32) -> ServerSpec {
        let host = host.into();
        let name = ketama_name(&host, port);
        ServerSpec {
            host,
            port,
            weight,
            name,
        }
    }

    /// Parses `host:port[:weight] [name]` (weight defaults to 1).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] naming the entry when a part is missing, the
    /// port or weight is not a number, the weight is 0, or a part is extra.
    pub fn parse(entry: &str) -> Result<ServerSpec> {
        let bad = |why: &str| {
            Error::InvalidRequest(format!(
                "bad server entry {entry:?}: {why} (expected host:port[:weight] [name])"
            ))
        };
        let mut words = entry.split_whitespace();
        let address = words.next().ok_or_else(|| bad("empty"))?;
        let name = words.next();
        if words.next().is_some() {
            return Err(bad("too many words"));
        }
        let mut parts = address.split(':');
        let host = parts.next().filter(|host| !host.is_empty());
        let host = host.ok_or_else(|| bad("no host"))?;
        let port = parts.next().ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("port is not a number"))?;
        let weight = match parts.next() {
            Some(weight) => weight.parse().map_err(|_| bad("weight is not a number"))?,
            None => 1,
        };
        if parts.next().is_some() {
            return Err(bad("too many colons"));
        }
        if weight == 0 {
            return Err(bad("weight must be at least 1"));
        }
        let mut spec = ServerSpec::new(host, port, weight);
        if let Some(name) = name {
            spec.name = name.to_string();
        }
        Ok(spec)
    }

    /// `host:port` (`[host]:port` for an IPv6 address), the address to
    /// connect to.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The server as the continuum sees it.
    pub fn node(&self) -> Node {
        Node::new(self.name.clone(), self.weight)
    }
}

impl From<SocketAddr> for ServerSpec {
    /// The server at `addr` with weight 1 and the default ketama name.
    fn from(addr: SocketAddr) -> ServerSpec {
        ServerSpec::new(addr.ip().to_string(), addr.port(), 1)
    }
}

impl FromStr for ServerSpec {
    type Err = Error;

    /// Same as [`ServerSpec::parse`].
    fn from_str(entry: &str) -> Result<ServerSpec> {
        ServerSpec::parse(entry)
    }
}

impl fmt::Display for ServerSpec {
    /// The twemproxy form, `host:port:weight name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{} {}",
            self.host, self.port, self.weight, self.name
        )
    }
}

/// A point of the continuum: a position and the index of its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    value: u32,
    server: usize,
}

/// The ketama continuum of a list of servers: maps a key hash to a server
/// index (the server's position in the list it was built from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuum {
    points: Vec<Point>,
    servers: usize,
}

impl Continuum {
    /// The continuum of every server in `nodes`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when `nodes` is empty or a weight is 0.
    pub fn new(nodes: &[Node]) -> Result<Continuum> {
        Continuum::with_live(nodes, &vec![true; nodes.len()])
    }

    /// The continuum of the servers of `nodes` whose entry in `live` is
    /// true (ejected servers get no points, and the live ones' points are
    /// computed over the live servers only, as twemproxy does). Indexes
    /// returned stay those of `nodes`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when `nodes` is empty, a weight is 0, or
    /// `live` is not as long as `nodes`.
    pub fn with_live(nodes: &[Node], live: &[bool]) -> Result<Continuum> {
        if nodes.is_empty() {
            return Err(Error::InvalidRequest(
                "a cluster needs at least one server".to_string(),
            ));
        }
        if live.len() != nodes.len() {
            return Err(Error::InvalidRequest(format!(
                "live flags for {} servers given for {} servers",
                live.len(),
                nodes.len()
            )));
        }
        if let Some(node) = nodes.iter().find(|node| node.weight == 0) {
            return Err(Error::InvalidRequest(format!(
                "server {} has weight 0: weights start at 1",
                node.name
            )));
        }
        Ok(Continuum::build(nodes, live))
    }

    /// [`Continuum::with_live`] on arguments already checked.
    fn build(nodes: &[Node], live: &[bool]) -> Continuum {
        let live_count = live.iter().filter(|&&up| up).count();
        // u32 on purpose: twemproxy sums the weights in a uint32_t.
        let total_weight = nodes
            .iter()
            .zip(live)
            .filter(|(_, &up)| up)
            .fold(0u32, |sum, (node, _)| sum.wrapping_add(node.weight));
        let mut points = Vec::with_capacity(live_count * POINTS_PER_SERVER as usize);
        for (server, node) in nodes.iter().enumerate() {
            if !live[server] {
                continue;
            }
            let count = points_for(node.weight, total_weight, live_count);
            for group in 0..count / POINTS_PER_HASH {
                let digest = Md5::digest(format!("{}-{}", node.name, group).as_bytes());
                for word in digest.chunks_exact(4) {
                    let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    points.push(Point { value, server });
                }
            }
        }
        // Ties between servers (two equal 32-bit points) are ordered by
        // server index; C's qsort leaves their order unspecified.
        points.sort_unstable();
        Continuum {
            points,
            servers: nodes.len(),
        }
    }

    /// Index of the server owning position `hash`: the first point at or
    /// after it, wrapping around; `None` when no server is live.
    pub fn locate(&self, hash: u32) -> Option<usize> {
        let first_at_or_after = self.points.partition_point(|point| point.value < hash);
        self.points
            .get(first_at_or_after)
            .or_else(|| self.points.first())
            .map(|point| point.server)
    }

    /// Index of the server owning `key` hashed with `hash`.
    pub fn server_for(&self, key: &[u8], hash: KeyHash) -> Option<usize> {
        self.locate(hash.hash(key))
    }

    /// Number of points on the continuum.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when no server is live.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Number of servers it was built from, live or not.
    pub fn servers(&self) -> usize {
        self.servers
    }

    /// How many points each server has (0 for an ejected one).
    pub fn points_per_server(&self) -> Vec<usize> {
        let mut counts = vec![0; self.servers];
        for point in &self.points {
            counts[point.server] += 1;
        }
        counts
    }
}

/// Points of a server of `weight` among `live` servers of `total_weight`,
/// with twemproxy's single-precision arithmetic so rounding agrees:
/// `floorf(pct * 160 / 4 * live + 1e-10) * 4`.
fn points_for(weight: u32, total_weight: u32, live: usize) -> u32 {
    let pct = weight as f32 / total_weight as f32;
    let groups = pct * POINTS_PER_SERVER as f32 / POINTS_PER_HASH as f32 * live as f32;
    // The C adds a double constant, then floorf converts back to float.
    let groups = (f64::from(groups) + 0.000_000_000_1) as f32;
    groups.floor() as u32 * POINTS_PER_HASH
}

/// Settings of a [`Cluster`]; start from `ClusterOptions::default()` and
/// chain the setters.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    hash: KeyHash,
    timeout: Duration,
    auto_eject: bool,
    failure_limit: u32,
    retry_interval: Duration,
    tls: Option<TlsConnector>,
    credentials: Option<Credentials>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            hash: KeyHash::Md5,
            timeout: Duration::from_secs(2),
            auto_eject: true,
            failure_limit: 2,
            retry_interval: Duration::from_secs(30),
            tls: None,
            credentials: None,
        }
    }
}

impl ClusterOptions {
    /// How keys are hashed onto the continuum (default [`KeyHash::Md5`]; it
    /// must match the `hash:` of any twemproxy routing the same keys).
    pub fn hash(mut self, hash: KeyHash) -> Self {
        self.hash = hash;
        self
    }

    /// Timeout of connecting to a server and of every read and write
    /// (default 2 s, as `timeout: 2000` in `deploy/nutcracker.yml`). A
    /// timeout counts as a failure of that server.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether failing servers are ejected (default true, as twemproxy's
    /// `auto_eject_hosts: true` in `deploy/nutcracker.yml`). With false, a
    /// dead server's keys fail until it is back and never move to another
    /// server: no stale reads after it returns, at the cost of those keys'
    /// availability meanwhile.
    pub fn auto_eject(mut self, eject: bool) -> Self {
        self.auto_eject = eject;
        self
    }

    /// Failures in a row after which a server is ejected (default 2, as
    /// twemproxy's `server_failure_limit`; 0 is taken as 1). A failure is a
    /// refused or broken connection, a timeout or a reply that is not the
    /// protocol; answers such as `NOT_STORED` are not failures.
    pub fn failure_limit(mut self, failures: u32) -> Self {
        self.failure_limit = failures.max(1);
        self
    }

    /// How long an ejected server stays out before it is tried again
    /// (default 30 s, as twemproxy's `server_retry_timeout: 30000`): the
    /// first request after that time puts it back on the continuum. When it
    /// answers it takes its keys back; when not, it takes
    /// [`ClusterOptions::failure_limit`] failures to eject it again.
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// Talks to every server over TLS with `connector` (default: plain
    /// TCP). Each server's certificate must be valid for its
    /// [`ServerSpec::host`].
    pub fn tls(mut self, connector: TlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Authenticates every connection with `credentials` (memcached's
    /// ASCII auth; default: none).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
}

/// What [`Cluster`] needs of a connection to one server.
trait Connection: Send {
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    /// One value (or `None`) per key, in order.
    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;
    fn delete(&mut self, key: &[u8]) -> Result<bool>;
}

impl Connection for McClient {
    fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        McClient::set(self, key, value, 0, 0)
    }

    fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut hits: HashMap<Vec<u8>, Vec<u8>> = McClient::get_many(self, keys, false)?
            .into_iter()
            .map(|(key, item)| (key, item.value))
            .collect();
        let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        // A key asked for twice gets its value twice.
        let mut first_seen: HashMap<&[u8], usize> = HashMap::new();
        for (i, &key) in keys.iter().enumerate() {
            let value = match first_seen.get(key) {
                Some(&first) => values[first].clone(),
                None => {
                    first_seen.insert(key, i);
                    hits.remove(key)
                }
            };
            values.push(value);
        }
        Ok(values)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        McClient::delete(self, key)
    }
}

/// Opens a connection to a server with a timeout.
type Connector = Box<dyn Fn(&ServerSpec, Duration) -> Result<Box<dyn Connection>> + Send + Sync>;

/// A server of the cluster and what the client knows of it.
struct Slot {
    spec: ServerSpec,
    conn: Option<Box<dyn Connection>>,
    /// Failures in a row since the last success or ejection.
    failures: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
}

/// A client of several servers of the memcached dialect (kvstore servers,
/// or memcached itself), each key sent to the server the ketama continuum
/// gives it: the same server twemproxy with the same server list and hash
/// would pick.
///
/// Failover works as twemproxy's `auto_eject_hosts`: a server that fails
/// [`ClusterOptions::failure_limit`] times in a row is ejected, the
/// continuum is rebuilt without it so its keys go to the next server on the
/// continuum (nobody else's move), and it is tried again after
/// [`ClusterOptions::retry_interval`]. A request whose server is ejected by
/// its own failure is sent again to the key's new server, so with a limit of
/// 1 a dead server costs callers no error at all; below the limit the
/// failure is returned.
///
/// One connection per server, opened on first use and reopened after a
/// failure. A `Cluster` is used from one thread at a time (`&mut self`);
/// give each thread its own.
pub struct Cluster {
    slots: Vec<Slot>,
    nodes: Vec<Node>,
    /// The continuum of the servers not ejected.
    continuum: Continuum,
    options: ClusterOptions,
    connector: Connector,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self
            .slots
            .iter()
            .map(|slot| slot.spec.to_string())
            .collect();
        f.debug_struct("Cluster")
            .field("servers", &servers)
            .field("ejected", &self.ejected())
            .field("options", &self.options)
            .finish()
    }
}

impl Cluster {
    /// A client of `servers` with the default [`ClusterOptions`].
    ///
    /// Connections ([`McClient`]) are opened on first use, one per server,
    /// so a server that is down now costs nothing until one of its keys is
    /// used, and then counts as a failure.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when `servers` is empty or a weight is 0.
    pub fn connect(servers: &[ServerSpec]) -> Result<Cluster> {
        Cluster::connect_with(servers, ClusterOptions::default())
    }

    /// A client of `servers` with `options`; see [`Cluster::connect`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] when `servers` is empty or a weight is 0.
    pub fn connect_with(servers: &[ServerSpec], options: ClusterOptions) -> Result<Cluster> {
        let tls = options.tls.clone();
        let credentials = options.credentials.clone();
        let connector: Connector = Box::new(move |spec: &ServerSpec, timeout| {
            let mut connect = ConnectOptions::with_timeout(timeout);
            if let Some(tls) = &tls {
                connect = connect.tls(tls.clone(), spec.host.clone());
            }
            connect.credentials = credentials.clone();
            let client = McClient::connect_with(spec.addr(), &connect)?;
            Ok(Box::new(client) as Box<dyn Connection>)
        });
        Cluster::with_connector(servers, options, connector)
    }

    /// A client with `options` of `servers` over connections `connector`
    /// opens; nothing is connected yet.
    fn with_connector(
        servers: &[ServerSpec],
        options: ClusterOptions,
        connector: Connector,
    ) -> Result<Cluster> {
        let nodes: Vec<Node> = servers.iter().map(ServerSpec::node).collect();
        let continuum = Continuum::new(&nodes)?;
        let slots = servers
            .iter()
            .map(|spec| Slot {
                spec: spec.clone(),
                conn: None,
                failures: 0,
                ejected_until: None,
            })
            .collect();
        Ok(Cluster {
            slots,
            nodes,
            continuum,
            options,
            connector,
        })
    }

    /// The servers, in the order given (a server's index is its place here).
    pub fn servers(&self) -> impl Iterator<Item = &ServerSpec> + '_ {
        self.slots.iter().map(|slot| &slot.spec)
    }

    /// Indexes of the servers ejected now.
    pub fn ejected(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&index| self.slots[index].ejected_until.is_some())
            .collect()
    }

    /// Index of the server `key` goes to now (`None` when every server is
    /// ejected). Ejected servers whose retry time has come are not taken
    /// back until the next request.
    pub fn server_for(&self, key: impl AsRef<[u8]>) -> Option<usize> {
        self.continuum.server_for(key.as_ref(), self.options.hash)
    }

    /// Stores `value` under `key` on the key's server.
    ///
    /// # Errors
    ///
    /// The server's answer when it refuses ([`Error::NotStored`],
    /// [`Error::Rejected`]); a connection error when the key's server failed
    /// and was not ejected (yet); the last such error when every server is
    /// ejected.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let (key, value) = (key.as_ref(), value.as_ref());
        self.route(key, |conn| conn.set(key, value))
    }

    /// The value of `key` on the key's server, `None` when it has none.
    ///
    /// # Errors
    ///
    /// As [`Cluster::set`].
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        let key = key.as_ref();
        let mut values = self.route(key, |conn| conn.get_many(&[key]))?;
        match values.pop() {
            Some(value) if values.is_empty() => Ok(value),
            _ => Err(Error::Protocol(format!(
                "{} values for one key",
                values.len() + 1
            ))),
        }
    }

    /// Deletes `key` on the key's server; `true` if it was there.
    ///
    /// # Errors
    ///
    /// As [`Cluster::set`].
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> Result<bool> {
        let key = key.as_ref();
        self.route(key, |conn| conn.delete(key))
    }

    /// The values of `keys`, in order: one multi-get per server involved.
    ///
    /// # Errors
    ///
    /// As [`Cluster::set`], for any of the servers involved.
    pub fn get_many<K: AsRef<[u8]>>(&mut self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut values = vec![None; keys.len()];
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut last_failure = None;
        // Each round that leaves keys pending ejected a server, so this
        // ends after at most one round per server.
        self.readmit_due();
        for _ in 0..=self.slots.len() {
            if pending.is_empty() {
                return Ok(values);
            }
            let mut by_server: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
            for &index in &pending {
                let key = keys[index].as_ref();
                let server = match self.server_for(key) {
                    Some(server) => server,
                    None => return Err(last_failure.unwrap_or_else(|| self.all_ejected())),
                };
                by_server.entry(server).or_default().push(index);
            }
            pending.clear();
            for (server, indexes) in by_server {
                let batch: Vec<&[u8]> = indexes.iter().map(|&i| keys[i].as_ref()).collect();
                match self.call(server, |conn| conn.get_many(&batch)) {
                    Ok(found) if found.len() == indexes.len() => {
                        for (index, value) in indexes.into_iter().zip(found) {
                            values[index] = value;
                        }
                    }
                    Ok(found) => {
                        return Err(Error::Protocol(format!(
                            "{} values for {} keys from {}",
                            found.len(),
                            indexes.len(),
                            self.slots[server].spec.addr()
                        )))
                    }
                    Err(e) if is_server_failure(&e) && self.fail(server) => {
                        pending.extend(indexes);
                        last_failure = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(last_failure.unwrap_or_else(|| self.all_ejected()))
    }

    /// Runs `op` on the server of `key`, sending it again to the key's next
    /// server when a failure ejects the first.
    fn route<T>(
        &mut self,
        key: &[u8],
        mut op: impl FnMut(&mut dyn Connection) -> Result<T>,
    ) -> Result<T> {
        let mut last_failure = None;
        // Retries are due at the start of a request only, so a server
        // ejected during this one is not tried again by it.
        self.readmit_due();
        for _ in 0..=self.slots.len() {
            let Some(server) = self.server_for(key) else {
                break;
            };
            match self.call(server, &mut op) {
                Err(e) if is_server_failure(&e) && self.fail(server) => last_failure = Some(e),
                other => return other,
            }
        }
        Err(last_failure.unwrap_or_else(|| self.all_ejected()))
    }

    /// Runs `op` on server `server`'s connection, opening it if needed; an
    /// error closes the connection (its state is unknown).
    fn call<T>(
        &mut self,
        server: usize,
        op: impl FnOnce(&mut dyn Connection) -> Result<T>,
    ) -> Result<T> {
        let slot = &mut self.slots[server];
        let conn = match &mut slot.conn {
            Some(conn) => conn,
            empty => empty.insert((self.connector)(&slot.spec, self.options.timeout)?),
        };
        let result = op(conn.as_mut());
        match &result {
            Ok(_) => slot.failures = 0,
            // After an error reply the connection may still hold the rest
            // of the reply: start the next request on a fresh one.
            Err(e) => {
                slot.conn = None;
                if !is_server_failure(e) {
                    slot.failures = 0;
                }
            }
        }
        result
    }

    /// Counts a failure of `server`; ejects it and returns `true` at the
    /// limit.
    fn fail(&mut self, server: usize) -> bool {
        let slot = &mut self.slots[server];
        slot.conn = None;
        slot.failures = slot.failures.saturating_add(1);
        if !self.options.auto_eject || slot.failures < self.options.failure_limit {
            return false;
        }
        slot.failures = 0;
        let now = Instant::now();
        slot.ejected_until = Some(now.checked_add(self.options.retry_interval).unwrap_or(now));
        log::warn!(
            "ejecting server {} after {} failure(s); retrying it in {:?}",
            slot.spec,
            self.options.failure_limit,
            self.options.retry_interval
        );
        self.rebuild();
        true
    }

    /// Takes back the ejected servers whose retry time has come.
    fn readmit_due(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        for slot in &mut self.slots {
            if slot.ejected_until.is_some_and(|until| until <= now) {
                slot.ejected_until = None;
                log::info!("retrying ejected server {}", slot.spec);
                changed = true;
            }
        }
        if changed {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let live: Vec<bool> = self
            .slots
            .iter()
            .map(|slot| slot.ejected_until.is_none())
            .collect();
        self.continuum = Continuum::build(&self.nodes, &live);
    }

    fn all_ejected(&self) -> Error {
        let addrs: Vec<String> = self.slots.iter().map(|slot| slot.spec.addr()).collect();
        Error::Connect {
            addr: addrs.join(","),
            source: io::Error::new(
                io::ErrorKind::NotConnected,
                "every server of the cluster is ejected",
            ),
        }
    }
}

/// Whether `error` means the server is unreachable or broken (and counts
/// toward ejecting it), rather than an answer of a working server.
fn is_server_failure(error: &Error) -> bool {
    matches!(
        error,
        Error::Connect { .. } | Error::Io { .. } | Error::Protocol(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(specs: &[(&str, u16, u32)]) -> Vec<Node> {
        specs
            .iter()
            .map(|&(host, port, weight)| Node::new(ketama_name(host, port), weight))
            .collect()
    }

    fn keys() -> Vec<String> {
        let mut keys: Vec<String> = [
            "foo",
            "bar",
            "key:1",
            "key:2",
            "key:3",
            "hello",
            "a",
            "zzzz",
            "user:1000",
        ]
        .iter()
        .map(|key| key.to_string())
        .collect();
        keys.push("x".repeat(250));
        keys
    }

    fn route(continuum: &Continuum) -> Vec<usize> {
        keys()
            .iter()
            .map(|key| continuum.server_for(key.as_bytes(), KeyHash::Md5).unwrap())
            .collect()
    }

    // Expected indexes come from libmemcached 1.1.4 itself
    // (memcached_generate_hash with MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED),
    // called through Python ctypes on the same server lists.
    #[test]
    fn equal_weights_route_like_libmemcached() {
        let continuum = Continuum::new(&nodes(&[
            ("127.0.0.1", 11211, 1),
            ("127.0.0.1", 11212, 1),
            ("127.0.0.1", 11213, 1),
        ]))
        .unwrap();
        assert_eq!(route(&continuum), [0, 1, 0, 0, 0, 0, 1, 0, 2, 2]);
    }

    #[test]
    fn unequal_weights_route_like_libmemcached() {
        let continuum = Continuum::new(&nodes(&[
            ("10.0.0.1", 11211, 1),
            ("10.0.0.2", 11211, 2),
            ("10.0.0.3", 22122, 5),
        ]))
        .unwrap();
        assert_eq!(route(&continuum), [1, 1, 1, 2, 2, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn ketama_name_drops_only_the_default_port() {
        assert_eq!(ketama_name("127.0.0.1", 11211), "127.0.0.1");
        assert_eq!(ketama_name("127.0.0.1", 11212), "127.0.0.1:11212");
        assert_eq!(ketama_name("cache-1", 0), "cache-1:0");
    }

    #[test]
    fn md5_key_hash_is_the_first_digest_word_little_endian() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(KeyHash::Md5.hash(b""), 0xd98c_1dd4);
        // MD5("foo") = acbd18db4cc2f85cedef654fccc4a4d8
        assert_eq!(KeyHash::Md5.hash(b"foo"), 0xdb18_bdac);
    }

    #[test]
    fn fnv1a_64_key_hash_is_twemproxys_truncated_variant() {
        // Offset basis truncated to 32 bits for the empty key.
        assert_eq!(KeyHash::Fnv1a64.hash(b""), 0x8422_2325);
        // One step by hand: (0x84222325 ^ 0x61) * 0x000001b3 mod 2^32.
        let by_hand = (0x8422_2325u32 ^ 0x61).wrapping_mul(0x1b3);
        assert_eq!(KeyHash::Fnv1a64.hash(b"a"), by_hand);
        // A byte >= 0x80 is sign-extended like a C char.
        let by_hand = (0x8422_2325u32 ^ 0xffff_ff80).wrapping_mul(0x1b3);
        assert_eq!(KeyHash::Fnv1a64.hash(&[0x80]), by_hand);
    }

    #[test]
    fn key_hash_names_round_trip() {
        for hash in [KeyHash::Md5, KeyHash::Fnv1a64] {
            assert_eq!(hash.name().parse::<KeyHash>().unwrap(), hash);
        }
        assert!("crc32".parse::<KeyHash>().is_err());
    }

    #[test]
    fn points_are_the_digest_words_of_name_dash_index() {
        let continuum = Continuum::new(&[Node::new("solo", 1)]).unwrap();
        assert_eq!(continuum.len(), 160);
        // Every point of "solo" must be a word of MD5("solo-<i>"), i < 40.
        let mut expected: Vec<u32> = (0..40)
            .flat_map(|i| {
                let digest = Md5::digest(format!("solo-{i}").as_bytes());
                (0..4)
                    .map(|w| u32::from_le_bytes(digest[w * 4..w * 4 + 4].try_into().unwrap()))
                    .collect::<Vec<_>>()
            })
            .collect();
        expected.sort_unstable();
        let got: Vec<u32> = continuum.points.iter().map(|p| p.value).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn locate_takes_first_point_at_or_after_and_wraps() {
        let continuum = Continuum {
            points: vec![
                Point {
                    value: 10,
                    server: 0,
                },
                Point {
                    value: 20,
                    server: 1,
                },
                Point {
                    value: 30,
                    server: 2,
                },
            ],
            servers: 3,
        };
        assert_eq!(continuum.locate(0), Some(0));
        assert_eq!(continuum.locate(10), Some(0));
        assert_eq!(continuum.locate(11), Some(1));
        assert_eq!(continuum.locate(30), Some(2));
        assert_eq!(continuum.locate(31), Some(0));
        assert_eq!(continuum.locate(u32::MAX), Some(0));
    }

    #[test]
    fn point_counts_follow_weights() {
        let equal = Continuum::new(&nodes(&[("a", 1, 1), ("b", 1, 1), ("c", 1, 1)])).unwrap();
        assert_eq!(equal.points_per_server(), [160, 160, 160]);
        // 1/8, 2/8, 5/8 of 3 * 40 groups: floor(15)=15, floor(30)=30, floor(75)=75.
        let weighted = Continuum::new(&nodes(&[("a", 1, 1), ("b", 1, 2), ("c", 1, 5)])).unwrap();
        assert_eq!(weighted.points_per_server(), [60, 120, 300]);
        // 7 servers: 1/7 * 40 * 7 is 40.000004 in f32, floor 40.
        let seven: Vec<Node> = (0..7).map(|i| Node::new(format!("s{i}"), 1)).collect();
        assert_eq!(
            Continuum::new(&seven).unwrap().points_per_server(),
            [160; 7]
        );
    }

    #[test]
    fn ejecting_a_server_moves_only_its_keys() {
        let all = nodes(&[("h", 1, 1), ("h", 2, 1), ("h", 3, 1)]);
        let full = Continuum::new(&all).unwrap();
        let without_1 = Continuum::with_live(&all, &[true, false, true]).unwrap();
        assert_eq!(without_1.points_per_server(), [160, 0, 160]);
        let mut moved = 0;
        for i in 0..3000 {
            let key = format!("key-{i}");
            let before = full.server_for(key.as_bytes(), KeyHash::Md5).unwrap();
            let after = without_1.server_for(key.as_bytes(), KeyHash::Md5).unwrap();
            if before == 1 {
                assert_ne!(after, 1);
                moved += 1;
            } else {
                assert_eq!(before, after, "{key} moved though its server is live");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn shares_are_near_even_with_equal_weights() {
        let continuum = Continuum::new(&nodes(&[
            ("127.0.0.1", 11211, 1),
            ("127.0.0.1", 11212, 1),
            ("127.0.0.1", 11213, 1),
        ]))
        .unwrap();
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let key = format!("k{i}");
            counts[continuum.server_for(key.as_bytes(), KeyHash::Md5).unwrap()] += 1;
        }
        for count in counts {
            assert!((7_000..13_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn no_live_server_locates_nothing() {
        let all = nodes(&[("h", 1, 1), ("h", 2, 1)]);
        let none = Continuum::with_live(&all, &[false, false]).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.server_for(b"k", KeyHash::Md5), None);
    }

    #[test]
    fn server_entries_parse_like_twemproxy() {
        let plain = ServerSpec::parse("127.0.0.1:11212:1").unwrap();
        assert_eq!(plain, ServerSpec::new("127.0.0.1", 11212, 1));
        assert_eq!(plain.name, "127.0.0.1:11212");
        assert_eq!(plain.addr(), "127.0.0.1:11212");
        let default_port = ServerSpec::parse("10.0.0.1:11211").unwrap();
        assert_eq!(
            (default_port.weight, default_port.name.as_str()),
            (1, "10.0.0.1")
        );
        let named = ServerSpec::parse("  127.0.0.1:40000:3   kv-a ").unwrap();
        assert_eq!(
            (named.port, named.weight, named.name.as_str()),
            (40000, 3, "kv-a")
        );
        assert_eq!(named.to_string().parse::<ServerSpec>().unwrap(), named);
        let from_addr = ServerSpec::from(SocketAddr::from(([127, 0, 0, 1], 40001)));
        assert_eq!(from_addr, ServerSpec::parse("127.0.0.1:40001:1").unwrap());
        let v6 = ServerSpec::from("[::1]:40002".parse::<SocketAddr>().unwrap());
        assert_eq!(v6.addr(), "[::1]:40002");
        for bad in [
            "",
            "127.0.0.1",
            ":11211",
            "h:port",
            "h:70000",
            "h:1:0",
            "h:1:x",
            "h:1:1:1",
            "h:1:1 a b",
        ] {
            assert!(ServerSpec::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn bad_server_lists_are_rejected() {
        assert!(Continuum::new(&[]).is_err());
        assert!(Continuum::new(&[Node::new("a", 0)]).is_err());
        assert!(Continuum::with_live(&[Node::new("a", 1)], &[true, true]).is_err());
    }

    // --- Cluster over fake servers: routing and failover without sockets.

    use std::sync::Arc;

    use parking_lot::Mutex;

    #[derive(Default)]
    struct FakeServer {
        up: bool,
        data: HashMap<Vec<u8>, Vec<u8>>,
    }

    type Farm = Arc<Mutex<Vec<FakeServer>>>;

    struct FakeConn {
        farm: Farm,
        index: usize,
    }

    impl FakeConn {
        fn with<T>(&self, op: impl FnOnce(&mut FakeServer) -> Result<T>) -> Result<T> {
            let mut farm = self.farm.lock();
            let server = &mut farm[self.index];
            if !server.up {
                return Err(Error::Io {
                    addr: format!("fake {}", self.index),
                    source: io::Error::from(io::ErrorKind::ConnectionReset),
                });
            }
            op(server)
        }
    }

    impl Connection for FakeConn {
        fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
            self.with(|server| {
                if key == b"refused" {
                    return Err(Error::NotStored);
                }
                server.data.insert(key.to_vec(), value.to_vec());
                Ok(())
            })
        }
        fn get_many(&mut self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
            self.with(|server| Ok(keys.iter().map(|k| server.data.get(*k).cloned()).collect()))
        }
        fn delete(&mut self, key: &[u8]) -> Result<bool> {
            self.with(|server| Ok(server.data.remove(key).is_some()))
        }
    }

    fn specs(n: usize) -> Vec<ServerSpec> {
        (0..n)
            .map(|i| ServerSpec::new("10.0.0.1", 11300 + i as u16, 1))
            .collect()
    }

    fn fake_cluster(n: usize, options: ClusterOptions) -> (Cluster, Farm) {
        let farm: Farm = Arc::new(Mutex::new(
            (0..n)
                .map(|_| FakeServer {
                    up: true,
                    ..FakeServer::default()
                })
                .collect(),
        ));
        let shared = Arc::clone(&farm);
        let connector: Connector = Box::new(move |spec: &ServerSpec, _timeout| {
            let index = usize::from(spec.port - 11300);
            if !shared.lock()[index].up {
                return Err(Error::Connect {
                    addr: spec.addr(),
                    source: io::Error::from(io::ErrorKind::ConnectionRefused),
                });
            }
            Ok(Box::new(FakeConn {
                farm: Arc::clone(&shared),
                index,
            }) as Box<dyn Connection>)
        });
        let cluster = Cluster::with_connector(&specs(n), options, connector).unwrap();
        (cluster, farm)
    }

    fn set_up(farm: &Farm, index: usize, up: bool) {
        farm.lock()[index].up = up;
    }

    fn holders(farm: &Farm, key: &[u8]) -> Vec<usize> {
        let farm = farm.lock();
        (0..farm.len())
            .filter(|&i| farm[i].data.contains_key(key))
            .collect()
    }

    /// A key the full continuum of `n` servers puts on `server`.
    fn key_on(n: usize, server: usize, nth: usize) -> String {
        let continuum =
            Continuum::new(&specs(n).iter().map(ServerSpec::node).collect::<Vec<_>>()).unwrap();
        (0..)
            .map(|i| format!("key-{i}"))
            .filter(|key| continuum.server_for(key.as_bytes(), KeyHash::Md5) == Some(server))
            .nth(nth)
            .unwrap()
    }

    #[test]
    fn cluster_puts_each_key_on_its_continuum_server_only() {
        let (mut cluster, farm) = fake_cluster(3, ClusterOptions::default());
        let continuum =
            Continuum::new(&specs(3).iter().map(ServerSpec::node).collect::<Vec<_>>()).unwrap();
        for i in 0..300 {
            let key = format!("k{i}");
            cluster.set(&key, format!("v{i}")).unwrap();
            let expected = continuum.server_for(key.as_bytes(), KeyHash::Md5).unwrap();
            assert_eq!(holders(&farm, key.as_bytes()), [expected], "{key}");
            assert_eq!(
                cluster.get(&key).unwrap(),
                Some(format!("v{i}").into_bytes())
            );
        }
        assert!(cluster.delete("k1").unwrap());
        assert!(!cluster.delete("k1").unwrap());
        assert_eq!(cluster.get("k1").unwrap(), None);
    }

    #[test]
    fn dead_server_is_ejected_at_the_failure_limit_and_its_keys_move_on() {
        let (mut cluster, farm) = fake_cluster(3, ClusterOptions::default().failure_limit(2));
        let key = key_on(3, 1, 0);
        set_up(&farm, 1, false);
        // First failure: below the limit, the caller sees it.
        assert!(matches!(cluster.set(&key, "v"), Err(Error::Connect { .. })));
        assert!(cluster.ejected().is_empty());
        // Second: ejected, and the request goes to the key's next server.
        cluster.set(&key, "v").unwrap();
        assert_eq!(cluster.ejected(), [1]);
        let without_1 = Continuum::with_live(
            &specs(3).iter().map(ServerSpec::node).collect::<Vec<_>>(),
            &[true, false, true],
        )
        .unwrap();
        let next = without_1.server_for(key.as_bytes(), KeyHash::Md5).unwrap();
        assert_eq!(holders(&farm, key.as_bytes()), [next]);
        assert_eq!(cluster.server_for(&key), Some(next));
    }

    #[test]
    fn failure_limit_one_fails_over_without_an_error() {
        let (mut cluster, farm) = fake_cluster(3, ClusterOptions::default().failure_limit(1));
        let key = key_on(3, 2, 0);
        set_up(&farm, 2, false);
        cluster.set(&key, "v").unwrap();
        assert_eq!(cluster.get(&key).unwrap(), Some(b"v".to_vec()));
        assert_eq!(cluster.ejected(), [2]);
    }

    #[test]
    fn other_servers_keys_work_while_one_is_down() {
        let (mut cluster, farm) = fake_cluster(3, ClusterOptions::default().failure_limit(5));
        let (on_0, on_2) = (key_on(3, 0, 0), key_on(3, 2, 0));
        cluster.set(&on_0, "zero").unwrap();
        cluster.set(&on_2, "two").unwrap();
        set_up(&farm, 1, false);
        for _ in 0..10 {
            assert_eq!(cluster.get(&on_0).unwrap(), Some(b"zero".to_vec()));
            assert_eq!(cluster.get(&on_2).unwrap(), Some(b"two".to_vec()));
        }
        assert!(cluster.ejected().is_empty());
    }

    #[test]
    fn ejected_server_stays_out_until_its_retry_interval() {
        let options = ClusterOptions::default()
            .failure_limit(1)
            .retry_interval(Duration::from_secs(3600));
        let (mut cluster, farm) = fake_cluster(3, options);
        let key = key_on(3, 1, 0);
        cluster.set(&key, "before").unwrap();
        set_up(&farm, 1, false);
        cluster.set(&key, "during").unwrap();
        set_up(&farm, 1, true);
        // Back up, but not retried for an hour: the key still reads from
        // the server that took it over.
        assert_eq!(cluster.get(&key).unwrap(), Some(b"during".to_vec()));
        assert_eq!(cluster.ejected(), [1]);
    }

    #[test]
    fn retried_server_takes_its_keys_back_with_their_data() {
        let options = ClusterOptions::default()
            .failure_limit(1)
            .retry_interval(Duration::ZERO);
        let (mut cluster, farm) = fake_cluster(3, options);
        let key = key_on(3, 1, 0);
        let other = key_on(3, 0, 0);
        cluster.set(&key, "kept").unwrap();
        set_up(&farm, 1, false);
        cluster.set(&other, "x").unwrap();
        // The key's server fails on every try: the request fails over.
        cluster.set(&key, "elsewhere").unwrap();
        assert_eq!(holders(&farm, key.as_bytes()).len(), 2);
        set_up(&farm, 1, true);
        // Retry due at once: server 1 is back with what it held.
        assert_eq!(cluster.get(&key).unwrap(), Some(b"kept".to_vec()));
        assert!(cluster.ejected().is_empty());
    }

    #[test]
    fn every_server_down_is_an_error_not_a_hang() {
        let options = ClusterOptions::default()
            .failure_limit(1)
            .retry_interval(Duration::from_secs(3600));
        let (mut cluster, farm) = fake_cluster(3, options);
        for i in 0..3 {
            set_up(&farm, i, false);
        }
        assert!(cluster.set("k", "v").is_err());
        assert_eq!(cluster.ejected(), [0, 1, 2]);
        let error = cluster.get("k").unwrap_err();
        assert!(error.to_string().contains("10.0.0.1:11300"), "{error}");
        assert!(cluster.get_many(&["a", "b"]).is_err());
    }

    #[test]
    fn get_many_keeps_order_across_servers_and_fails_over() {
        let (mut cluster, farm) = fake_cluster(3, ClusterOptions::default().failure_limit(1));
        let keys: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
        for key in keys.iter().step_by(2) {
            cluster.set(key, key.to_uppercase()).unwrap();
        }
        let expect: Vec<Option<Vec<u8>>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| (i % 2 == 0).then(|| key.to_uppercase().into_bytes()))
            .collect();
        assert_eq!(cluster.get_many(&keys).unwrap(), expect);
        let servers: std::collections::HashSet<_> =
            keys.iter().filter_map(|k| cluster.server_for(k)).collect();
        assert_eq!(servers.len(), 3);
        // Server 0 dies: its keys read as missing from their new server,
        // the others' keys still read, in order.
        set_up(&farm, 0, false);
        let continuum =
            Continuum::new(&specs(3).iter().map(ServerSpec::node).collect::<Vec<_>>()).unwrap();
        let got = cluster.get_many(&keys).unwrap();
        for (i, key) in keys.iter().enumerate() {
            if continuum.server_for(key.as_bytes(), KeyHash::Md5) == Some(0) {
                assert_eq!(got[i], None, "{key}");
            } else {
                assert_eq!(got[i], expect[i], "{key}");
            }
        }
        assert_eq!(cluster.ejected(), [0]);
    }

    #[test]
    fn without_auto_eject_a_dead_servers_keys_fail_and_never_move() {
        let options = ClusterOptions::default().auto_eject(false).failure_limit(1);
        let (mut cluster, farm) = fake_cluster(3, options);
        let key = key_on(3, 0, 0);
        cluster.set(&key, "kept").unwrap();
        set_up(&farm, 0, false);
        for _ in 0..5 {
            assert!(cluster.set(&key, "elsewhere").is_err());
            assert!(cluster.get(&key).is_err());
        }
        assert!(cluster.ejected().is_empty());
        assert_eq!(holders(&farm, key.as_bytes()), [0]);
        set_up(&farm, 0, true);
        assert_eq!(cluster.get(&key).unwrap(), Some(b"kept".to_vec()));
    }

    #[test]
    fn cluster_can_move_to_another_thread() {
        fn is_send<T: Send>() {}
        is_send::<Cluster>();
    }

    #[test]
    fn refusals_are_answers_not_failures() {
        let (mut cluster, _farm) = fake_cluster(3, ClusterOptions::default().failure_limit(1));
        for _ in 0..5 {
            assert!(matches!(cluster.set("refused", "v"), Err(Error::NotStored)));
        }
        assert!(cluster.ejected().is_empty());
    }
}
