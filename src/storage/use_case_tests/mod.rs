//! Use cases run on the real store: they live here because storage depends on the service
//! layer, never the other way round (DESIGN.md §1).

mod allowlist;
mod domain_settings;
