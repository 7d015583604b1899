//! SKELETON: `kvstore-server` is being written.
fn main() {}
