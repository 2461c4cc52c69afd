//! `trivial`: does nothing and exits 0. The end-to-end tests time instantiate-and-run with it.

fn main() {}
