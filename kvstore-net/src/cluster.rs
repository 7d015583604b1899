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
//! running nutcracker in front of real memcached servers, and the unit tests
//! below pin server choices computed by libmemcached itself.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};

use crate::error::{Error, Result};

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

    /// `host:port`, the address to connect to.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The server as the continuum sees it.
    pub fn node(&self) -> Node {
        Node::new(self.name.clone(), self.weight)
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
        Ok(Continuum {
            points,
            servers: nodes.len(),
        })
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
}
