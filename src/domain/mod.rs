//! The vocabulary of mailconnect: types that can only be built by parsing, and the product's rules.
//! Nothing here does I/O.

pub mod allowlist;
pub mod directory;
pub mod domain_name;
pub mod domain_settings;
pub mod email;
pub mod page;
pub mod principal;
pub mod probe;
pub mod providers;
pub mod secret;
pub mod time;
pub mod violation;

pub use violation::{FieldViolation, Violations};
