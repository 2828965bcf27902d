//! Use cases. Each module holds one, depends on traits for what it stores or calls, and knows
//! nothing of protobuf.

pub mod allowlist;
pub mod attempts;
pub mod clock;
pub mod conditions;
pub mod directory;
pub mod dispatcher;
pub mod domain_settings;
mod error;
pub mod identity;
pub mod inbox_connections;
pub mod key_rotation;
pub mod monitor;
pub mod pagination;
pub mod probing;
mod store;

pub use error::{CONCURRENT_TRANSACTION, ServiceError};
pub use store::StoreError;
