//! Every call's deadline: the client's `grpc-timeout` or `MAILCONNECT_REQUEST_TIMEOUT`, whichever
//! is shorter. A call still unanswered then is DEADLINE_EXCEEDED (reason DEADLINE_EXCEEDED), the
//! code gRPC gives a passed deadline; tonic's own timeout answers CANCELLED "Timeout expired".

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;

use super::BoxFuture;
use super::policy::{CallPolicy, Inner, Response};
use super::status::status;

/// tonic still enforces `grpc-timeout` itself, with a timer started just before this layer's and
/// checked only after this layer's answer: this layer's fires that much earlier, so that the
/// caller gets DEADLINE_EXCEEDED rather than tonic's CANCELLED.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(2);

/// The most digits a `grpc-timeout` may have (gRPC's HTTP/2 protocol; tonic ignores longer ones).
const GRPC_TIMEOUT_DIGITS: usize = 8;

/// `grpc-timeout` is at most 8 digits followed by a unit: H, M, S, m (ms), u (µs), n (ns).
pub(super) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = value.get(..value.len() - 1)?;
    if digits.len() > GRPC_TIMEOUT_DIGITS {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount.checked_mul(3600)?),
        'M' => Duration::from_secs(amount.checked_mul(60)?),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Layer over the whole router (streams: until their response starts, as tonic's timeout).
#[derive(Clone)]
pub struct Deadline {
    /// `MAILCONNECT_REQUEST_TIMEOUT`.
    limit: Duration,
}

impl Deadline {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }

    /// How long the call may take.
    fn budget<B>(&self, request: &http::Request<B>) -> Duration {
        let client = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        match client {
            Some(client) if client <= self.limit => client.saturating_sub(AHEAD_OF_TONIC),
            _ => self.limit,
        }
    }
}

impl CallPolicy for Deadline {
    fn call<S: Inner<B>, B>(
        &self,
        inner: &mut S,
        request: http::Request<B>,
    ) -> BoxFuture<Response, S::Error> {
        let budget = self.budget(&request);
        let answer = inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(budget, answer).await {
                Ok(answered) => answered,
                Err(_) => Ok(status(
                    Code::DeadlineExceeded,
                    "DEADLINE_EXCEEDED",
                    "the call's deadline (its grpc-timeout or the server's request timeout) passed before it was answered",
                    HashMap::new(),
                )
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(
            parse_grpc_timeout("99999999H"),
            Some(Duration::from_secs(359_999_996_400))
        );
        assert_eq!(parse_grpc_timeout("18446744073709551615S"), None);
        assert_eq!(parse_grpc_timeout("123456789n"), None);
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let deadline = Deadline::new(Duration::from_secs(30));
        let with = |timeout: &str| {
            let request = http::Request::builder()
                .header("grpc-timeout", timeout)
                .body(())
                .unwrap();
            deadline.budget(&request)
        };
        assert_eq!(with("1S"), Duration::from_millis(998));
        assert_eq!(with("1H"), Duration::from_secs(30));
        assert_eq!(with("junk"), Duration::from_secs(30));
    }
}
