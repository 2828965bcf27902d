//! The integration tests: the real server over real gRPC, on Postgres and on SQLite.

mod allowlist;
mod cli;
mod directory;
mod grpcurl;
mod harness;
mod server;
