//! The vocabulary of mailconnect: types that can only be built by parsing, and the product's rules.
//! Nothing here does I/O.

pub mod allowlist;
pub mod channel;
pub mod connection;
pub mod credentials;
pub mod directory;
pub mod domain_name;
pub mod domain_settings;
pub mod email;
pub mod inbound;
pub mod inbox;
pub mod notification;
pub mod page;
pub mod principal;
pub mod probe;
pub mod providers;
pub mod sealing;
pub mod secret;
pub mod special_purpose;
pub mod time;
pub mod verification;
pub mod violation;

pub use violation::{FieldViolation, Violations};
