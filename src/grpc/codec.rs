//! The protobuf codec of every generated `mailconnect.v1` server and client: prost's, except that
//! a request that does not decode is the caller's fault. tonic's `ProstCodec` answers it with
//! INTERNAL (the gRPC spec's advice for a peer's bug); callers here are people with `grpcurl` and
//! fuzzers, so it is INVALID_ARGUMENT with ErrorInfo reason `MALFORMED_MESSAGE`.

use std::collections::HashMap;
use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// `ProstCodec` with [`MessageDecoder`]: selected in `build.rs` with `codec_path`.
#[derive(Debug, Clone)]
pub struct MessageCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for MessageCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for MessageCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder, whose only error (bytes that are not a `U`) becomes INVALID_ARGUMENT.
#[derive(Debug)]
pub struct MessageDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0
            .decode(buf)
            .map_err(|error| malformed(error.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

fn malformed(detail: &str) -> Status {
    super::status::status(
        Code::InvalidArgument,
        "MALFORMED_MESSAGE",
        format!("the request is not a valid protobuf message of the method's type: {detail}"),
        HashMap::new(),
    )
}
