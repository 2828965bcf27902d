//! Subcommands of the `mailconnect` binary beyond serving, kept out of `main.rs`.

pub mod allowlist;
pub mod dev;
pub mod keys;
