//! The integration tests: the real server over real gRPC, on Postgres and on SQLite.

mod allowlist;
mod attempted_domains;
mod cli;
mod connection_monitor;
mod connections;
mod credentials;
mod directory;
mod domain_settings;
mod fault_servers;
mod grpcurl;
mod hardening;
mod harness;
mod inbox_world;
mod inboxes;
mod mail_servers;
mod packaging;
mod probe;
mod probe_cli;
mod probe_guard;
mod probe_leaks;
mod process;
mod resources;
mod server;
mod shutdown;
mod telemetry;
mod token_endpoint;
