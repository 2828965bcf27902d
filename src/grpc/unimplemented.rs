//! Answers every method of the services that are declared in the contract but not built yet
//! with UNIMPLEMENTED naming the method, instead of tonic's anonymous "unknown path" reply.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Code;

use super::status::status;
use super::{BoxFuture, split_rpc_path};

/// Layer over the whole router; `services` are fully-qualified service names.
#[derive(Clone)]
pub struct UnimplementedLayer {
    services: Arc<[&'static str]>,
}

impl UnimplementedLayer {
    pub fn new(services: &[&'static str]) -> Self {
        Self {
            services: services.into(),
        }
    }
}

impl<S> tower::Layer<S> for UnimplementedLayer {
    type Service = Unimplemented<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Unimplemented {
            inner,
            services: self.services.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Unimplemented<S> {
    inner: S,
    services: Arc<[&'static str]>,
}

impl<S, B> tower::Service<http::Request<B>> for Unimplemented<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Paths are "/package.Service/Method".
        let path = request.uri().path();
        let pending = split_rpc_path(path).filter(|(service, _)| self.services.contains(service));
        if let Some((service, method)) = pending {
            let status = status(
                Code::Unimplemented,
                "NOT_IMPLEMENTED",
                format!("{service}/{method} is not implemented yet"),
                HashMap::from([("method".to_owned(), format!("{service}/{method}"))]),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}
