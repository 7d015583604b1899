//! The integration tests of kvstore-net, in one test binary (one link
//! instead of one per file, which made the cold build slow). Each file
//! below is a module; `cargo test -p kvstore-net --test tests <module>::`
//! runs one of them.

mod acks_wire;
mod auth;
mod binary;
mod binary_clients;
mod binary_wire;
mod cluster;
mod common;
mod concurrency;
mod crash_wire;
mod faults_wire;
#[path = "../../kvstore-core/tests/common/mod.rs"]
mod hooked;
mod hostile;
mod limits;
mod many_connections;
mod memcached_wire;
mod meta_client;
mod meta_parity;
mod meta_wire;
mod operators;
mod seed_wire;
mod tls;
mod tools;
mod vs_memcached;
