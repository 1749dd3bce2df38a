//! `slicetrace-agent` binary entry point.
fn main() {}
