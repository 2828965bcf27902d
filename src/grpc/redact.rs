//! Debug for the generated messages that carry secrets (build.rs skips their derived Debug):
//! the secret fields print as `***`, everything else as the derive would.

use std::fmt;

use super::proto::{OAuthGrant, PasswordCredentials};

const HIDDEN: &str = "***";

impl fmt::Debug for PasswordCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordCredentials")
            .field("username", &self.username)
            .field("password", &HIDDEN)
            .finish()
    }
}

impl fmt::Debug for OAuthGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthGrant")
            .field("refresh_token", &HIDDEN)
            .field("access_token", &HIDDEN)
            .field("access_token_expire_time", &self.access_token_expire_time)
            .field("scopes", &self.scopes)
            .field("account_email", &self.account_email)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::proto::{
        ConnectPersonalInboxRequest, Credentials, ProbeDomainSettingsRequest, credentials,
    };
    use super::*;

    #[test]
    fn requests_print_without_their_secrets() {
        let password = PasswordCredentials {
            username: "jane".into(),
            password: "hunter2-password".into(),
        };
        let probe = format!(
            "{:?}",
            ProbeDomainSettingsRequest {
                domain_settings: None,
                test_credentials: Some(password),
            }
        );
        assert!(!probe.contains("hunter2"), "{probe}");
        assert!(probe.contains("jane"), "{probe}");
        let connect = format!(
            "{:?}",
            ConnectPersonalInboxRequest {
                credentials: Some(Credentials {
                    method: Some(credentials::Method::Oauth(OAuthGrant {
                        refresh_token: "1//refresh-secret".into(),
                        access_token: "ya29.access-secret".into(),
                        account_email: "jane@acme.example".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }
        );
        for secret in ["refresh-secret", "access-secret"] {
            assert!(!connect.contains(secret), "{connect}");
        }
        assert!(connect.contains("jane@acme.example"), "{connect}");
    }
}
