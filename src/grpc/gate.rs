//! Answers `mailconnect.v1` calls that cannot be served before they reach a service: UNAVAILABLE
//! while the database is not ready (not reachable or not migrated), instead of letting them fail
//! inside with an internal error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic::{Code, Status};

use super::policy::{CallPolicy, Inner, Response};
use super::status::status;
use super::{BoxFuture, split_rpc_path};

/// The package whose calls need the database.
const PACKAGE_PREFIX: &str = "mailconnect.v1.";

/// Whether the database is ready; set by the readiness tracker, read on every call.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Layer over the whole router.
#[derive(Clone)]
pub struct Gate {
    readiness: Readiness,
}

impl Gate {
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }

    /// The early answer for a call to `service`, if any.
    fn answer(&self, service: &str) -> Option<Status> {
        if service.starts_with(PACKAGE_PREFIX) && !self.readiness.is_ready() {
            return Some(status(
                Code::Unavailable,
                "NOT_READY",
                "the service is starting or has lost its database; retry with backoff",
                HashMap::new(),
            ));
        }
        None
    }
}

impl CallPolicy for Gate {
    fn call<S: Inner<B>, B>(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> BoxFuture<Response, S::Error> {
        let answer =
            split_rpc_path(request.uri().path()).and_then(|(service, _)| self.answer(service));
        match answer {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => Box::pin(inner.call(request)),
        }
    }
}
