//! The integration tests: the real server over real gRPC, on Postgres and on SQLite.

mod cli;
mod directory;
mod fault_servers;
mod grpcurl;
mod harness;
mod mail_servers;
mod probe;
mod probe_cli;
mod probe_guard;
mod server;
