//! Verifying a channel's custom from address (seed 001): a code mailed through the relay, or at
//! once for an address on one of the account's sending domains (STARTER and higher tiers).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::domain::channel::{ChannelSettings, CustomAddress, FromAddress, VerificationState};
use crate::domain::connection::{Connection, parse_connection_name};
use crate::domain::directory::Tier;
use crate::domain::principal::Principal;
use crate::domain::verification::{
    CODE_TTL, MAX_ATTEMPTS, MAX_SENDS, SEND_WINDOW, code_hash, code_mail, parse_code,
};
use crate::service::ServiceError;
use crate::service::dispatcher::{MailRelay, OutgoingMail, RelayError};
use crate::service::probing::Prober;

use super::channels::channel_of;
use super::store::{
    AttemptOutcome, CodeStart, CodeStartOutcome, ConnectionChange, InboxConnectionStore,
    PendingCode,
};
use super::{InboxConnectionService, SettingsResolver, TokenRefresher, connection_not_found};

/// The relay as the verification use cases hold it (one type whatever the relay is).
pub trait CodeMailer: Send + Sync + 'static {
    fn send_mail(
        &self,
        mail: OutgoingMail,
    ) -> Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send + '_>>;
    /// The domain of the relay's From address, for Message-IDs.
    fn domain(&self) -> String;
}

/// A relay and the domain its mail comes from.
pub struct RelayMailer<M> {
    pub relay: Arc<M>,
    pub domain: String,
}

impl<M: MailRelay> CodeMailer for RelayMailer<M> {
    fn send_mail(
        &self,
        mail: OutgoingMail,
    ) -> Pin<Box<dyn Future<Output = Result<(), RelayError>> + Send + '_>> {
        Box::pin(self.relay.send(mail))
    }

    fn domain(&self) -> String {
        self.domain.clone()
    }
}

/// The Message-ID prefix of verification emails: the inbound router knows its own mail by it.
pub const VERIFICATION_ID_PREFIX: &str = "verification-";

/// What StartAddressVerification did.
pub struct VerificationStarted {
    pub connection: Connection,
    pub sent_to: String,
    /// When the code stops being accepted; `None` when the address was verified at once.
    pub expire_time: Option<SystemTime>,
}

fn precondition(reason: &'static str, message: String) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason,
        message,
        metadata: BTreeMap::new(),
    }
}

fn custom_of(connection: &Connection) -> Result<(&ChannelSettings, &CustomAddress), ServiceError> {
    let channel = channel_of(connection)?;
    match &channel.from_address.custom {
        Some(custom) => Ok((channel, custom)),
        None => Err(precondition(
            "NO_CUSTOM_FROM_ADDRESS",
            format!(
                "{} sends from its default address: set a CUSTOM from address first (UpdateChannelSettings)",
                connection.name()
            ),
        )),
    }
}

/// The channel with its custom address in `state` (and remembered once verified).
fn with_state(
    channel: &ChannelSettings,
    custom: &CustomAddress,
    state: VerificationState,
) -> ChannelSettings {
    let verified = match state {
        VerificationState::Verified => Some(custom.address.clone()),
        _ => channel.from_address.verified.clone(),
    };
    ChannelSettings {
        from_address: FromAddress {
            custom: Some(CustomAddress {
                address: custom.address.clone(),
                state,
            }),
            verified,
        },
        ..channel.clone()
    }
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    pub async fn start_address_verification(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<VerificationStarted, ServiceError> {
        let id = parse_connection_name("name", name)?;
        let connection = self
            .managed_connection(principal, id, "StartAddressVerification")
            .await?;
        let (channel, custom) = custom_of(&connection)?;
        let sent_to = custom.address.as_str().to_owned();
        if custom.state == VerificationState::Verified {
            return Ok(VerificationStarted {
                connection,
                sent_to,
                expire_time: None,
            });
        }
        if self
            .on_sending_domain(connection.account_id, custom)
            .await?
        {
            let verified = with_state(channel, custom, VerificationState::Verified);
            let connection = self
                .change(
                    &connection,
                    Some(connection.version),
                    ConnectionChange::AddressVerified(verified),
                    name,
                )
                .await?;
            return Ok(VerificationStarted {
                connection,
                sent_to,
                expire_time: None,
            });
        }
        let mailer = self.mailer.as_ref().ok_or_else(|| {
            ServiceError::Unavailable(
                "this server has no mail relay to send verification codes: the operator sets MAILCONNECT_SMTP_RELAY_URL".to_owned(),
            )
        })?;
        let code = format!("{:06}", rand::random_range(0..1_000_000u32));
        let salt: [u8; 16] = rand::random();
        let now = self.clock.now();
        let expire_time = now + CODE_TTL;
        let start = CodeStart {
            account_id: connection.account_id,
            connection_id: connection.id,
            expected_version: connection.version,
            channel: with_state(channel, custom, VerificationState::Pending),
            code: PendingCode {
                address: sent_to.clone(),
                salt: salt.to_vec(),
                code_hash: code_hash(&salt, connection.id, &sent_to, &code),
                expire_time,
            },
            address_key: sent_to.to_lowercase(),
            now,
            window_start: now - SEND_WINDOW,
            max_sends: MAX_SENDS,
        };
        let connection = match self.store.start_verification(start).await? {
            CodeStartOutcome::Started(connection) => *connection,
            CodeStartOutcome::RateLimited { oldest } => {
                let retry = (oldest + SEND_WINDOW)
                    .duration_since(now)
                    .unwrap_or_default();
                return Err(ServiceError::ResourceExhausted {
                    reason: "VERIFICATION_RATE_LIMITED",
                    message: format!(
                        "{sent_to} was sent {MAX_SENDS} codes in the last hour: wait before asking for another"
                    ),
                    retry_after: Some(retry),
                });
            }
            CodeStartOutcome::Stale => {
                return Err(ServiceError::Aborted {
                    reason: "CONCURRENT_CHANGE",
                    message: format!("{name} changed meanwhile: retry"),
                });
            }
            CodeStartOutcome::NotFound => return Err(connection_not_found(id)),
        };
        let (subject, body) = code_mail(&sent_to, &code);
        let mail = OutgoingMail {
            message_id: format!(
                "{VERIFICATION_ID_PREFIX}{}-{:016x}@{}",
                connection.id,
                rand::random::<u64>(),
                mailer.domain()
            ),
            to: sent_to.clone(),
            subject,
            body,
        };
        if let Err(error) = mailer.send_mail(mail).await {
            tracing::warn!(connection = %connection.name(), %error, "verification email not sent");
            return Err(ServiceError::Unavailable(
                "the mail relay did not take the verification email: retry later".to_owned(),
            ));
        }
        Ok(VerificationStarted {
            connection,
            sent_to,
            expire_time: Some(expire_time),
        })
    }

    /// An address on one of the account's sending domains, for tiers that connect them.
    async fn on_sending_domain(
        &self,
        account_id: i64,
        custom: &CustomAddress,
    ) -> Result<bool, ServiceError> {
        let Some(account) = self.store.directory_account(account_id).await? else {
            return Ok(false);
        };
        Ok(account.tier != Tier::Free
            && account
                .sending_domains
                .iter()
                .any(|domain| domain == custom.address.domain()))
    }

    pub async fn verify_address(
        &self,
        principal: &Principal,
        name: &str,
        code: &str,
    ) -> Result<Connection, ServiceError> {
        let id = parse_connection_name("name", name)?;
        let code = parse_code("code", code).map_err(|violation| ServiceError::InvalidValue {
            reason: "VERIFICATION_CODE_INVALID",
            violations: vec![violation],
        })?;
        let connection = self
            .managed_connection(principal, id, "VerifyAddress")
            .await?;
        let (channel, custom) = custom_of(&connection)?;
        if custom.state == VerificationState::Verified {
            return Ok(connection);
        }
        let not_started = || {
            precondition(
                "VERIFICATION_NOT_STARTED",
                format!(
                    "no code was sent to {}: call StartAddressVerification",
                    custom.address
                ),
            )
        };
        let now = self.clock.now();
        let pending = match self
            .store
            .claim_attempt(connection.account_id, id, now, MAX_ATTEMPTS)
            .await?
        {
            AttemptOutcome::NotStarted => return Err(not_started()),
            AttemptOutcome::Exhausted => {
                return Err(precondition(
                    "VERIFICATION_EXPIRED",
                    "the code expired or was tried too many times: ask for a new one (StartAddressVerification)".to_owned(),
                ));
            }
            // A code sent to an address the channel no longer uses verifies nothing.
            AttemptOutcome::Claimed(pending) if pending.address != custom.address.as_str() => {
                return Err(not_started());
            }
            AttemptOutcome::Claimed(pending) => pending,
        };
        if code_hash(&pending.salt, id, &pending.address, &code) != pending.code_hash {
            return Err(ServiceError::InvalidValue {
                reason: "VERIFICATION_CODE_INVALID",
                violations: vec![crate::domain::FieldViolation::new(
                    "code",
                    "is not the code sent to the address",
                )],
            });
        }
        self.change(
            &connection,
            Some(connection.version),
            ConnectionChange::AddressVerified(with_state(
                channel,
                custom,
                VerificationState::Verified,
            )),
            name,
        )
        .await
    }
}
