//! The unicompute server (in progress).
fn main() {}
