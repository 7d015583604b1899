//! # kvstore-cli: the command-line client as a library
//!
//! SKELETON: being written.
#![warn(missing_docs)]
