//! `Cluster` against three real kvstore servers started in-process on
//! 127.0.0.1 port 0: keys land where the ketama continuum says, a stopped
//! server is ejected while the others keep serving, and a server restarted
//! on its directory and port takes its keys back with their data.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvstore_core::Store;
use kvstore_net::{
    Cluster, ClusterOptions, Continuum, KeyHash, McClient, Server, ServerConfig, ServerHandle,
    ServerSpec,
};
use tempfile::TempDir;

const KEYS: usize = 300;

fn start(dir: &Path, port: u16) -> ServerHandle {
    let store = Arc::new(Store::open(dir).unwrap());
    let config = ServerConfig {
        seed_port: None,
        memcached_port: Some(port),
        ..ServerConfig::default()
    };
    Server::start(store, config).unwrap()
}

struct Three {
    dirs: Vec<TempDir>,
    servers: Vec<Option<ServerHandle>>,
    addrs: Vec<SocketAddr>,
    specs: Vec<ServerSpec>,
}

impl Three {
    fn start() -> Three {
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
        let servers: Vec<ServerHandle> = dirs.iter().map(|dir| start(dir.path(), 0)).collect();
        let addrs: Vec<SocketAddr> = servers
            .iter()
            .map(|server| server.memcached_addr().unwrap())
            .collect();
        let specs = addrs.iter().copied().map(ServerSpec::from).collect();
        Three {
            dirs,
            servers: servers.into_iter().map(Some).collect(),
            addrs,
            specs,
        }
    }

    fn stop(&mut self, index: usize) {
        if let Some(server) = self.servers[index].take() {
            server.shutdown().unwrap();
        }
    }

    fn restart(&mut self, index: usize) {
        assert!(self.servers[index].is_none());
        self.servers[index] = Some(start(self.dirs[index].path(), self.addrs[index].port()));
    }

    /// Which keys server `index` holds, asked of it directly.
    fn held_by(&self, index: usize, keys: &[String]) -> Vec<String> {
        let mut client = McClient::connect(self.addrs[index]).unwrap();
        let mut held = Vec::new();
        for batch in keys.chunks(100) {
            for (key, _) in client.get_many(batch, false).unwrap() {
                held.push(String::from_utf8(key).unwrap());
            }
        }
        held
    }

    fn continuum(&self) -> Continuum {
        Continuum::new(&self.specs.iter().map(ServerSpec::node).collect::<Vec<_>>()).unwrap()
    }
}

impl Drop for Three {
    fn drop(&mut self) {
        for index in 0..3 {
            self.stop(index);
        }
    }
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user:{i}")).collect()
}

fn value(key: &str) -> Vec<u8> {
    format!("value of {key}").into_bytes()
}

#[test]
fn keys_land_on_their_continuum_server_and_read_back() {
    let three = Three::start();
    let mut cluster = Cluster::connect(&three.specs).unwrap();
    let keys = keys();
    for key in &keys {
        cluster.set(key, value(key)).unwrap();
    }
    let continuum = three.continuum();
    for index in 0..3 {
        let mut held = three.held_by(index, &keys);
        held.sort();
        let mut predicted: Vec<String> = keys
            .iter()
            .filter(|key| continuum.server_for(key.as_bytes(), KeyHash::Md5) == Some(index))
            .cloned()
            .collect();
        predicted.sort();
        assert_eq!(held, predicted, "server {index}");
        // 300 keys over 3 equal servers: nobody is empty or holds most.
        assert!(
            (50..200).contains(&held.len()),
            "server {index}: {}",
            held.len()
        );
    }
    let values = cluster.get_many(&keys).unwrap();
    for (key, got) in keys.iter().zip(values) {
        assert_eq!(got, Some(value(key)), "{key}");
    }
    assert_eq!(cluster.get("user:none").unwrap(), None);
    assert!(cluster.delete(&keys[0]).unwrap());
    assert_eq!(cluster.get(&keys[0]).unwrap(), None);
}

#[test]
fn stopped_server_is_ejected_and_restarted_server_has_its_keys() {
    let mut three = Three::start();
    // Retry at every request: a stopped server costs each request one
    // refused connect, then the request fails over.
    let options = ClusterOptions::default()
        .failure_limit(1)
        .retry_interval(Duration::ZERO)
        .timeout(Duration::from_secs(5));
    let mut cluster = Cluster::connect_with(&three.specs, options).unwrap();
    let keys = keys();
    for key in &keys {
        cluster.set(key, value(key)).unwrap();
    }
    let continuum = three.continuum();
    let on_1 = |key: &String| continuum.server_for(key.as_bytes(), KeyHash::Md5) == Some(1);

    three.stop(1);
    let values = cluster.get_many(&keys).unwrap();
    for (key, got) in keys.iter().zip(&values) {
        if on_1(key) {
            // Failed over to a server that never had it.
            assert_eq!(*got, None, "{key}");
        } else {
            assert_eq!(*got, Some(value(key)), "{key}");
        }
    }
    assert_eq!(cluster.ejected(), [1]);
    for key in keys.iter().filter(|key| !on_1(key)).take(50) {
        assert_eq!(cluster.get(key).unwrap(), Some(value(key)));
    }

    three.restart(1);
    let values = cluster.get_many(&keys).unwrap();
    assert!(cluster.ejected().is_empty());
    for (key, got) in keys.iter().zip(values) {
        assert_eq!(got, Some(value(key)), "{key} after the restart");
    }
}

#[test]
fn ejected_server_stays_out_until_the_retry_interval() {
    let mut three = Three::start();
    let options = ClusterOptions::default()
        .failure_limit(2)
        .retry_interval(Duration::from_secs(3600));
    let mut cluster = Cluster::connect_with(&three.specs, options).unwrap();
    let continuum = three.continuum();
    let key = keys()
        .into_iter()
        .find(|key| continuum.server_for(key.as_bytes(), KeyHash::Md5) == Some(2))
        .unwrap();
    cluster.set(&key, "first").unwrap();
    three.stop(2);
    // Below the limit the failure reaches the caller; at the limit the
    // server is ejected and the write goes to the key's next server.
    assert!(cluster.set(&key, "second").is_err());
    cluster.set(&key, "second").unwrap();
    assert_eq!(cluster.ejected(), [2]);
    three.restart(2);
    // Back, but not retried for an hour: reads stay on the stand-in.
    assert_eq!(cluster.get(&key).unwrap(), Some(b"second".to_vec()));
    assert_eq!(cluster.ejected(), [2]);
}

#[test]
fn empty_or_zero_weight_server_lists_are_refused() {
    assert!(Cluster::connect(&[]).is_err());
    let zero = ServerSpec::new("127.0.0.1", 1, 0);
    assert!(Cluster::connect(&[zero]).is_err());
}
