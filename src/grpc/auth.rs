//! The bearer-token interceptor: `authorization: Bearer <JWT>` → [`Principal`] in the request's
//! extensions. Health and reflection are not wrapped by it, so probes and `grpcurl list` need no
//! token.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::domain::principal::Principal;
use crate::service::ServiceError;
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
