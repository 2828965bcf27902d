//! The integration tests: the real server over real gRPC, on Postgres and on SQLite.

mod allowlist;
mod cli;
mod directory;
mod grpcurl;
mod hardening;
mod harness;
mod packaging;
mod process;
mod server;
mod shutdown;
mod telemetry;
