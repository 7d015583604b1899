//! The integration tests of kvstore-core, in one test binary (one link
//! instead of one per file, which made the cold build slow). Each file
//! below is a module; `cargo test -p kvstore-core --test tests <module>::`
//! runs one of them.

mod basic;
mod common;
mod concurrency;
mod corruption;
mod crash;
mod fault_injection;
mod faults;
mod journal;
mod model;
mod power_cut;
mod security;
