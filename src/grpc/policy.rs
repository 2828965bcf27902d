//! The shape the router-wide layers share (gate, load shedding, telemetry, watch draining): a
//! policy that sees each call's request and either answers it itself or wraps the inner
//! service's answer.

use std::task::{Context, Poll};

use super::BoxFuture;

/// What the router answers.
pub type Response = http::Response<tonic::body::Body>;

/// The service a policy wraps: the router, or the next policy.
pub trait Inner<B>:
    tower::Service<http::Request<B>, Response = Response, Future: Send + 'static, Error: Send + 'static>
{
}

impl<S, B> Inner<B> for S where
    S: tower::Service<
            http::Request<B>,
            Response = Response,
            Future: Send + 'static,
            Error: Send + 'static,
        >
{
}

pub trait CallPolicy: Clone {
    /// Handles one call, usually by calling `inner`.
    fn call<S: Inner<B>, B>(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> BoxFuture<Response, S::Error>;
}

/// Applies a [`CallPolicy`] to every call of the service it wraps.
#[derive(Clone)]
pub struct PolicyLayer<P>(pub P);

impl<S, P: Clone> tower::Layer<S> for PolicyLayer<P> {
    type Service = WithPolicy<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        WithPolicy {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct WithPolicy<S, P> {
    inner: S,
    policy: P,
}

impl<S: Inner<B>, B, P: CallPolicy> tower::Service<http::Request<B>> for WithPolicy<S, P> {
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.policy.call(&mut self.inner, request)
    }
}
