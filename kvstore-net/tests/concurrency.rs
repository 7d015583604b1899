//! Many clients at once: 1,000 concurrent clients each set and get their
//! own key, verified. (10,000 connections: see many_connections.rs.)

use crate::common;

use std::sync::{Arc, Barrier};

use kvstore_net::{Client, McClient};

#[test]
fn thousand_concurrent_clients_set_and_get() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = common::start(tmp.path());
    const CLIENTS: usize = 1000;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let (seed, mc) = (srv.seed, srv.mc);
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    let key = format!("client-{i}");
                    let value = format!("value of {i} {}", "x".repeat(i % 300));
                    if i % 2 == 0 {
                        let mut c = Client::connect(seed).unwrap();
                        barrier.wait();
                        c.set(&key, &value).unwrap();
                        assert_eq!(c.get(&key).unwrap(), value.as_bytes());
                    } else {
                        let mut c = McClient::connect(mc).unwrap();
                        barrier.wait();
                        c.set(&key, &value, i as u32, 0).unwrap();
                        let item = c.get(&key).unwrap().unwrap();
                        assert_eq!((item.value, item.flags), (value.into_bytes(), i as u32));
                    }
                })
                .unwrap()
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(srv.store.len(), CLIENTS);
    srv.handle.shutdown().unwrap();
}
