//! Adapters to services beyond mail servers: the OAuth providers' token endpoints (proving
//! grants) and the SMTP relay (mailing notifications). Both are configured by the operator, not
//! by tenants, so they do not pass the probe's egress guard.

pub mod oauth;
pub mod relay;
