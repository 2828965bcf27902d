//! The secrets of a mailbox as a caller hands them over: checked once here, then sealed
//! (`sealing`) and never shown again.

use std::time::SystemTime;

use super::connection::Provider;
use super::email::EmailAddress;
use super::probe::ProbeCredentials;
use super::sealing::{Binding, Keyring, OpenError, Sealed};
use super::secret::Secret;
use super::{FieldViolation, Violations};

/// Longest OAuth token, in bytes; real ones are a few hundred.
const MAX_TOKEN: usize = 8192;

/// The `Credentials` oneof as sent.
#[derive(Debug, Clone)]
pub enum CredentialsInput {
    Missing,
    Password {
        username: String,
        password: Secret,
    },
    OAuth {
        refresh_token: Secret,
        access_token: Secret,
        access_token_expire_time: Option<SystemTime>,
        scopes: Vec<String>,
        account_email: String,
    },
}

/// A login for an IMAP/SMTP or Exchange server.
#[derive(Debug, Clone)]
pub struct PasswordLogin {
    pub username: String,
    pub password: Secret,
}

/// An OAuth grant from Google or Microsoft.
#[derive(Debug, Clone)]
pub struct OAuthGrant {
    pub refresh_token: Secret,
    pub access_token: Option<Secret>,
    pub access_token_expire_time: Option<SystemTime>,
    pub scopes: Vec<String>,
    pub account_email: String,
}

#[derive(Debug, Clone)]
pub enum Credentials {
    Password(PasswordLogin),
    OAuth(OAuthGrant),
}

/// Why credentials were refused.
#[derive(Debug)]
pub enum CredentialsError {
    Invalid(Vec<FieldViolation>),
    /// The grant was issued for another mailbox (`OAUTH_ACCOUNT_MISMATCH`).
    AccountMismatch(FieldViolation),
}

fn invalid(field: impl Into<String>, description: impl Into<String>) -> CredentialsError {
    CredentialsError::Invalid(vec![FieldViolation::new(field, description)])
}

impl CredentialsInput {
    /// Checks the credentials against the provider and the address being connected; `prefix` is
    /// the request path of the Credentials message.
    pub fn parse(
        self,
        prefix: &str,
        provider: Provider,
        email: &EmailAddress,
    ) -> Result<Credentials, CredentialsError> {
        let mut violations = Violations::new();
        match (self, provider.uses_oauth()) {
            (CredentialsInput::Missing, oauth) => {
                let what = if oauth {
                    "oauth (an OAuth grant)"
                } else {
                    "password"
                };
                Err(invalid(
                    prefix,
                    format!(
                        "is required: {what} for provider {}",
                        provider.display_name()
                    ),
                ))
            }
            (CredentialsInput::Password { username, password }, false) => {
                let username = if username.trim().is_empty() {
                    email.as_str().to_owned()
                } else {
                    username.trim().to_owned()
                };
                // The probe logs in with them: the same limits as its test credentials.
                ProbeCredentials::parse(&format!("{prefix}.password"), username, password)
                    .map(|login| {
                        Credentials::Password(PasswordLogin {
                            username: login.username,
                            password: login.password,
                        })
                    })
                    .map_err(CredentialsError::Invalid)
            }
            (
                CredentialsInput::OAuth {
                    refresh_token,
                    access_token,
                    access_token_expire_time,
                    scopes,
                    account_email,
                },
                true,
            ) => {
                let field = format!("{prefix}.oauth");
                let token_ok = |token: &Secret| {
                    token.expose().len() <= MAX_TOKEN
                        && token.expose().bytes().all(|b| b.is_ascii_graphic())
                };
                if refresh_token.expose().is_empty() || !token_ok(&refresh_token) {
                    violations.add(
                        format!("{field}.refresh_token"),
                        format!("is required: the provider's refresh token, at most {MAX_TOKEN} printable characters"),
                    );
                }
                if !token_ok(&access_token) {
                    violations.add(
                        format!("{field}.access_token"),
                        format!("must be at most {MAX_TOKEN} printable characters"),
                    );
                }
                let has_access = !access_token.expose().is_empty();
                if has_access && access_token_expire_time.is_none() {
                    violations.add(
                        format!("{field}.access_token_expire_time"),
                        "is required with access_token",
                    );
                }
                let account =
                    EmailAddress::parse(&format!("{field}.account_email"), &account_email);
                let account = violations.check(account);
                violations
                    .finish(|| ())
                    .map_err(CredentialsError::Invalid)?;
                let account = account.expect("checked");
                if account.as_str().to_lowercase() != email.as_str().to_lowercase() {
                    return Err(CredentialsError::AccountMismatch(FieldViolation::new(
                        format!("{field}.account_email"),
                        format!(
                            "the grant is for {account}, not for {email}: sign in to the provider as {email}"
                        ),
                    )));
                }
                Ok(Credentials::OAuth(OAuthGrant {
                    refresh_token,
                    access_token: has_access.then_some(access_token),
                    access_token_expire_time: access_token_expire_time.filter(|_| has_access),
                    scopes,
                    account_email: account.as_str().to_owned(),
                }))
            }
            (CredentialsInput::Password { .. }, true) => Err(invalid(
                format!("{prefix}.password"),
                format!(
                    "provider {} connects with an OAuth grant: send {prefix}.oauth",
                    provider.display_name()
                ),
            )),
            (CredentialsInput::OAuth { .. }, false) => Err(invalid(
                format!("{prefix}.oauth"),
                format!(
                    "provider {} connects with a username and password: send {prefix}.password",
                    provider.display_name()
                ),
            )),
        }
    }
}

/// Credentials as stored: each secret field sealed to its account, connection and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCredentials {
    pub key_id: String,
    pub username: String,
    pub password: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub access_token: Option<Vec<u8>>,
    pub access_token_expire_time: Option<SystemTime>,
    pub scopes: Vec<String>,
    pub account_email: String,
}

impl Credentials {
    /// Seals every secret field under the keyring's first key.
    pub fn seal(&self, keys: &Keyring, account_id: i64, connection_id: i64) -> SealedCredentials {
        let seal = |field: &str, secret: &Secret| {
            keys.seal(
                secret.expose().as_bytes(),
                Binding {
                    account_id,
                    connection_id,
                    field,
                },
            )
            .bytes
        };
        match self {
            Credentials::Password(login) => SealedCredentials {
                key_id: keys.primary_id().to_owned(),
                username: login.username.clone(),
                password: Some(seal("password", &login.password)),
                refresh_token: None,
                access_token: None,
                access_token_expire_time: None,
                scopes: Vec::new(),
                account_email: String::new(),
            },
            Credentials::OAuth(grant) => SealedCredentials {
                key_id: keys.primary_id().to_owned(),
                username: String::new(),
                password: None,
                refresh_token: Some(seal("refresh_token", &grant.refresh_token)),
                access_token: grant
                    .access_token
                    .as_ref()
                    .map(|token| seal("access_token", token)),
                access_token_expire_time: grant.access_token_expire_time,
                scopes: grant.scopes.clone(),
                account_email: grant.account_email.clone(),
            },
        }
    }
}

impl SealedCredentials {
    /// Opens what was sealed for this account and connection.
    pub fn open(
        &self,
        keys: &Keyring,
        account_id: i64,
        connection_id: i64,
    ) -> Result<Credentials, OpenError> {
        let open = |field: &str, bytes: &Vec<u8>| {
            keys.open_secret(
                &Sealed {
                    key_id: self.key_id.clone(),
                    bytes: bytes.clone(),
                },
                Binding {
                    account_id,
                    connection_id,
                    field,
                },
            )
        };
        match (&self.password, &self.refresh_token) {
            (Some(password), None) => Ok(Credentials::Password(PasswordLogin {
                username: self.username.clone(),
                password: open("password", password)?,
            })),
            (None, Some(refresh_token)) => Ok(Credentials::OAuth(OAuthGrant {
                refresh_token: open("refresh_token", refresh_token)?,
                access_token: self
                    .access_token
                    .as_ref()
                    .map(|token| open("access_token", token))
                    .transpose()?,
                access_token_expire_time: self.access_token_expire_time,
                scopes: self.scopes.clone(),
                account_email: self.account_email.clone(),
            })),
            _ => Err(OpenError::Corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> EmailAddress {
        EmailAddress::parse("e", "Ada@Example.com").unwrap()
    }

    fn password(username: &str, password: &str) -> CredentialsInput {
        CredentialsInput::Password {
            username: username.into(),
            password: Secret::new(password.into()),
        }
    }

    fn fields(err: CredentialsError) -> Vec<String> {
        match err {
            CredentialsError::Invalid(v) => v.into_iter().map(|v| v.field).collect(),
            CredentialsError::AccountMismatch(v) => vec![format!("mismatch:{}", v.field)],
        }
    }

    #[test]
    fn passwords_default_the_username_and_refuse_line_breaks() {
        let Credentials::Password(login) = password("", "pw")
            .parse("credentials", Provider::Imap, &email())
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(login.username, "Ada@example.com");
        let err = password("a\r\nb", "x\ny")
            .parse("credentials", Provider::Imap, &email())
            .unwrap_err();
        assert_eq!(
            fields(err),
            [
                "credentials.password.username",
                "credentials.password.password"
            ]
        );
        let err = password("", &"x".repeat(1025))
            .parse("credentials", Provider::Exchange, &email())
            .unwrap_err();
        assert_eq!(fields(err), ["credentials.password.password"]);
    }

    #[test]
    fn oauth_must_match_the_provider_and_the_address() {
        let grant = |account: &str| CredentialsInput::OAuth {
            refresh_token: Secret::new("1//refresh".into()),
            access_token: Secret::new(String::new()),
            access_token_expire_time: None,
            scopes: vec![],
            account_email: account.into(),
        };
        assert!(
            grant("ada@EXAMPLE.com")
                .parse("credentials", Provider::Gmail, &email())
                .is_ok()
        );
        assert_eq!(
            fields(
                grant("bob@example.com")
                    .parse("credentials", Provider::Gmail, &email())
                    .unwrap_err()
            ),
            ["mismatch:credentials.oauth.account_email"]
        );
        assert_eq!(
            fields(
                grant("ada@example.com")
                    .parse("credentials", Provider::Imap, &email())
                    .unwrap_err()
            ),
            ["credentials.oauth"]
        );
        assert_eq!(
            fields(
                password("", "pw")
                    .parse("credentials", Provider::Office365, &email())
                    .unwrap_err()
            ),
            ["credentials.password"]
        );
        assert_eq!(
            fields(
                CredentialsInput::Missing
                    .parse("credentials", Provider::Gmail, &email())
                    .unwrap_err()
            ),
            ["credentials"]
        );
    }
}
