//! Ends open `grpc.health.v1.Health/Watch` streams once shutdown has reported NOT_SERVING.
//! A watch never ends by itself, so without this every watching client (a load balancer, a
//! sidecar) would hold its connection open and stall the drain until the grace period is over.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;
use tokio_stream::Stream as _;
use tokio_stream::wrappers::WatchStream;
use tonic::{Code, Status};

use super::policy::{CallPolicy, Inner, Response};
use super::{BoxFuture, HEALTH_SERVICE, split_rpc_path};

/// `draining` turns true after NOT_SERVING has been sent to the watchers.
#[derive(Clone)]
pub struct DrainWatches {
    draining: watch::Receiver<bool>,
}

impl DrainWatches {
    pub fn new(draining: watch::Receiver<bool>) -> Self {
        Self { draining }
    }
}

impl CallPolicy for DrainWatches {
    fn call<S: Inner<B>, B>(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> BoxFuture<Response, S::Error> {
        let is_watch = split_rpc_path(request.uri().path()) == Some((HEALTH_SERVICE, "Watch"));
        let response = inner.call(request);
        if !is_watch {
            return Box::pin(response);
        }
        let draining = WatchStream::new(self.draining.clone());
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(EndsOnDrain {
                    body,
                    draining,
                    ended: false,
                })
            }))
        })
    }
}

/// A Watch response body that yields what the health service sends and, once draining has
/// begun and nothing more is pending, closes with UNAVAILABLE so the client looks elsewhere.
struct EndsOnDrain {
    body: tonic::body::Body,
    draining: WatchStream<bool>,
    ended: bool,
}

impl Body for EndsOnDrain {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The health service first: the NOT_SERVING update is delivered before the stream ends.
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        loop {
            match Pin::new(&mut self.draining).poll_next(cx) {
                Poll::Ready(Some(true)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(shutting_down()))));
                }
                Poll::Ready(Some(false)) => continue,
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The trailers of a stream closed by shutdown: UNAVAILABLE, which clients retry elsewhere.
fn shutting_down() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "grpc-status",
        http::HeaderValue::from(Code::Unavailable as i32),
    );
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("the%20server%20is%20shutting%20down"),
    );
    trailers
}
