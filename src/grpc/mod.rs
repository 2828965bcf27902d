//! The transport: the only place that sees generated protobuf types. One module per service
//! converts between proto and domain; errors become statuses in `status`.

mod allowlist;
pub mod auth;
mod directory;
pub mod status;
mod timestamp;
pub mod unimplemented;

pub use allowlist::AllowlistApi;
pub use directory::DirectoryApi;

/// The generated `mailconnect.v1` messages, servers and clients.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("mailconnect.v1");

    /// The encoded descriptor set of every `mailconnect.v1` file, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mailconnect_descriptor.bin"));
}
