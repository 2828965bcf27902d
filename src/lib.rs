//! mailconnect: which mail servers each email domain uses, which mailboxes are connected, and which
//! egress IPs customers must allow, as a gRPC service.

pub mod app;
pub mod commands;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod outbound;
pub mod probe;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod tokens;
