//! Global load shedding: at most N calls run in the whole server; one more is refused at once
//! with RESOURCE_EXHAUSTED (reason OVERLOADED) instead of queueing, so that a client (or its load
//! balancer) retries on a less busy replica, after the delay the refusal gives. A slot is held
//! until the response body ends, so streams count for as long as they are open. Health checks
//! are never shed: Kubernetes must see the truth even under load.

use std::collections::HashMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use super::policy::{CallPolicy, Inner, Response};
use super::status::ERROR_DOMAIN;
use super::{BoxFuture, HEALTH_SERVICE, split_rpc_path};

/// How long a refused caller is told to wait before it retries, in ms: long enough for the calls
/// running now to end, drawn anew for each refusal so that the refused do not come back together.
const RETRY_AFTER_MS: Range<u64> = 20..60;

#[derive(Clone)]
pub struct LoadShed {
    slots: Arc<Semaphore>,
    limit: usize,
}

impl LoadShed {
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// RESOURCE_EXHAUSTED with the delay twice: as `google.rpc.RetryInfo` for any client, and as
    /// `grpc-retry-pushback-ms`, which gRPC clients whose retry policy covers RESOURCE_EXHAUSTED
    /// wait out before they retry (gRFC A6).
    fn refusal(&self, retry_after: Duration) -> Status {
        let mut details = ErrorDetails::with_error_info(
            "OVERLOADED",
            ERROR_DOMAIN,
            HashMap::from([("max_concurrent_calls".to_owned(), self.limit.to_string())]),
        );
        details.set_retry_info(Some(retry_after));
        let mut status = Status::with_error_details(
            Code::ResourceExhausted,
            "the server is at its concurrent call limit; retry after the delay in RetryInfo, ideally on another replica",
            details,
        );
        let millis = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", MetadataValue::from(millis));
        status
    }
}

impl CallPolicy for LoadShed {
    fn call<S: Inner<B>, B>(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> BoxFuture<Response, S::Error> {
        if split_rpc_path(request.uri().path())
            .is_some_and(|(service, _)| service == HEALTH_SERVICE)
        {
            return Box::pin(inner.call(request));
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            let refusal = self.refusal(Duration::from_millis(rand::random_range(RETRY_AFTER_MS)));
            return Box::pin(std::future::ready(Ok(refusal.into_http())));
        };
        let response = inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(HoldingSlot {
                    body,
                    permit: Some(permit),
                })
            }))
        })
    }
}

/// A response body that keeps its call's slot until its last frame is taken (or it is dropped).
/// Not until the drop: the client has the trailers, and may send its next call, before the
/// server drops the body, and that call would find the slot still taken.
struct HoldingSlot {
    body: tonic::body::Body,
    permit: Option<OwnedSemaphorePermit>,
}

impl Body for HoldingSlot {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let last = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Ready(_) => true,
            Poll::Pending => false,
        };
        if last {
            self.permit = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
