//! Use cases. Each module holds one, depends on traits for what it stores or calls, and knows
//! nothing of protobuf.

pub mod allowlist;
pub mod directory;
mod error;
pub mod probing;

pub use error::ServiceError;
