//! SKELETON: `kvstore-cli` is being written.
fn main() {}
