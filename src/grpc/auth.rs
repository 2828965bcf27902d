//! The bearer-token interceptor: `authorization: Bearer <JWT>` → [`Principal`] in the request's
//! extensions, then [`FollowDirectory`] replaces it with what the directory allows now. Health and
//! reflection are not wrapped by them, so probes and `grpcurl list` need no token.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::server::NamedService;
use tonic::{Request, Status};

use super::BoxFuture;
use super::policy::Response;
use crate::domain::principal::Principal;
use crate::service::ServiceError;
use crate::service::directory::DirectoryStore;
use crate::service::identity::Identities;
use crate::tokens::{TokenError, TokenKeys};

#[derive(Clone)]
pub struct AuthInterceptor {
    keys: Arc<TokenKeys>,
}

impl AuthInterceptor {
    pub fn new(keys: Arc<TokenKeys>) -> Self {
        Self { keys }
    }
}

fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Status {
    ServiceError::Unauthenticated {
        reason,
        message: message.into(),
    }
    .into()
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let Some(header) = request.metadata().get("authorization") else {
            return Err(unauthenticated(
                "MISSING_TOKEN",
                "no credentials: send the metadata `authorization: Bearer <token>` \
                 (`mailconnect token --help` mints a development token)",
            ));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                unauthenticated(
                    "MALFORMED_AUTHORIZATION",
                    "the authorization metadata must be `Bearer <token>`",
                )
            })?;
        let principal = self.keys.verify(token).map_err(|error| match error {
            TokenError::Expired => unauthenticated("TOKEN_EXPIRED", error.to_string()),
            other => unauthenticated("INVALID_TOKEN", other.to_string()),
        })?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal the interceptor attached. Its absence is a wiring bug, not a caller error.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ServiceError::Internal("no principal on request".to_owned()).into())
}

/// Wraps one generated server, inside the interceptor: each call's token principal is checked
/// against the directory (a deleted user is refused, lowered roles are dropped) before the
/// handler sees it. Async, which an interceptor cannot be.
pub struct FollowDirectory<S, D> {
    inner: S,
    identities: Arc<Identities<D>>,
}

impl<S, D> FollowDirectory<S, D> {
    pub fn new(inner: S, identities: Arc<Identities<D>>) -> Self {
        Self { inner, identities }
    }
}

impl<S: Clone, D> Clone for FollowDirectory<S, D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            identities: Arc::clone(&self.identities),
        }
    }
}

impl<S: NamedService, D> NamedService for FollowDirectory<S, D> {
    const NAME: &'static str = S::NAME;
}

impl<S, D, B> tower::Service<http::Request<B>> for FollowDirectory<S, D>
where
    S: tower::Service<http::Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    D: DirectoryStore,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service serves this call; its clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let identities = Arc::clone(&self.identities);
        Box::pin(async move {
            if let Some(principal) = request.extensions_mut().remove::<Principal>() {
                match identities.current(principal).await {
                    Ok(principal) => {
                        request.extensions_mut().insert(principal);
                    }
                    Err(error) => return Ok(Status::from(error).into_http()),
                }
            }
            inner.call(request).await
        })
    }
}
