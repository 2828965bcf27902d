//! Bearer tokens: JWTs verified with an HS256 secret (development) or RS256/EdDSA/ES256 public keys
//! (production), turned into a [`Principal`]. Minting needs the secret; it is for development and
//! for grpcurl sessions, production tokens come from the platform's identity provider.
//!
//! A caller sends the same token with every call until it expires, and checking its signature
//! and claims was a tenth of the server's CPU on a cached read. So the tokens this process has
//! verified are remembered, by their exact text, with the principal and the expiry they carry:
//! the keys never change while the process runs, so the same text would verify again, and the
//! expiry is checked on every use. Only tokens that verified are kept.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

use crate::domain::principal::{Principal, Role};
use crate::domain::secret::Secret;

/// The claims mailconnect reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<i64>,
    #[serde(default)]
    roles: Vec<String>,
    /// Optional: identity providers need not send it.
    #[serde(default)]
    iat: u64,
    exp: u64,
    /// Written when minting under a configured issuer and audience; jsonwebtoken checks them
    /// on the way in (`aud` may be a string or a list there).
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    aud: Option<String>,
}

/// Why a token was refused. Deliberately coarse: the caller learns what to fix, an attacker
/// learns nothing about the keys.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token has expired: mint or fetch a new one")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("cannot mint tokens: {0}")]
    CannotMint(String),
}

/// Seconds of clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;

/// Distinct verified tokens remembered: a few hundred bytes each, about 2 MiB when full.
const VERIFIED_TOKENS: usize = 4096;

/// The shortest HS256 secret accepted: RFC 7518 §3.2 wants a key as long as the hash (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// The `iss` and `aud` every token must carry, when configured (neither is checked otherwise).
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Keys that verify (and, with a secret, mint) tokens.
pub struct TokenKeys {
    secret: Option<(EncodingKey, DecodingKey)>,
    public: Vec<(Algorithm, DecodingKey)>,
    expected: Expected,
    verified: Cache<Box<str>, Verified>,
}

/// What a verified token said.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    expires: u64,
}

impl TokenKeys {
    /// `public_keys` are PEM documents (RSA, Ed25519 or P-256 public keys).
    pub fn new(secret: Option<&Secret>, public_keys: &[String]) -> Result<Self, String> {
        let secret = secret
            .map(|secret| {
                let bytes = secret.expose().as_bytes();
                if bytes.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "the JWT secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
                         (make one with `openssl rand -hex 32`)",
                        bytes.len()
                    ));
                }
                Ok((
                    EncodingKey::from_secret(bytes),
                    DecodingKey::from_secret(bytes),
                ))
            })
            .transpose()?;
        let mut public = Vec::new();
        for (index, pem) in public_keys.iter().enumerate() {
            let pem = pem.as_bytes();
            let key = DecodingKey::from_rsa_pem(pem)
                .map(|key| (Algorithm::RS256, key))
                .or_else(|_| DecodingKey::from_ed_pem(pem).map(|key| (Algorithm::EdDSA, key)))
                .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (Algorithm::ES256, key)))
                .map_err(|_| {
                    format!(
                        "JWT public key #{} is not an RSA, Ed25519 or P-256 PEM public key",
                        index + 1
                    )
                })?;
            public.push(key);
        }
        if secret.is_none() && public.is_empty() {
            return Err("no JWT secret or public key configured".to_owned());
        }
        Ok(Self {
            secret,
            public,
            expected: Expected::default(),
            verified: Cache::new(VERIFIED_TOKENS),
        })
    }

    /// Refuses tokens without this issuer and audience (each when set); minted ones carry them.
    pub fn expecting(mut self, expected: Expected) -> Self {
        self.expected = expected;
        self
    }

    /// Verifies a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        self.verify_at(token, unix_now())
    }

    /// [`TokenKeys::verify`] at `now` (seconds since the epoch) for a token verified before.
    fn verify_at(&self, token: &str, now: u64) -> Result<Principal, TokenError> {
        let verified = match self.verified.get(token) {
            Some(verified) => verified,
            None => {
                let verified = self.check_signature_and_claims(token)?;
                self.verified.insert(token.into(), verified.clone());
                verified
            }
        };
        // The rule jsonwebtoken applies: expired once `exp` is more than the leeway ago.
        if verified.expires.saturating_add(LEEWAY_SECS) < now {
            return Err(TokenError::Expired);
        }
        Ok(verified.principal)
    }

    fn check_signature_and_claims(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenError::Invalid("malformed JWT".to_owned()))?;
        let candidates: Vec<&DecodingKey> = match header.alg {
            Algorithm::HS256 => self.secret.iter().map(|(_, key)| key).collect(),
            alg => self
                .public
                .iter()
                .filter(|(key_alg, _)| *key_alg == alg)
                .map(|(_, key)| key)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted by this server",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        // jsonwebtoken checks `iss` and `aud` only when present, unless they are required.
        let mut required = vec!["exp"];
        match &self.expected.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.expected.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let mut last = TokenError::Invalid("bad signature".to_owned());
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => {
                    return Ok(Verified {
                        expires: data.claims.exp,
                        principal: principal(data.claims),
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                            TokenError::Invalid("bad signature".to_owned())
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidIssuer => {
                            TokenError::Invalid("issued by another issuer".to_owned())
                        }
                        jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                            TokenError::Invalid("meant for another audience".to_owned())
                        }
                        _ => TokenError::Invalid("claims are missing or malformed".to_owned()),
                    }
                }
            }
        }
        Err(last)
    }

    /// Mints an HS256 token valid for `ttl`.
    pub fn mint(&self, principal: &Principal, ttl: Duration) -> Result<String, TokenError> {
        let (key, _) = self.secret.as_ref().ok_or_else(|| {
            TokenError::CannotMint(
                "only public keys are configured; set MAILCONNECT_JWT_SECRET".to_owned(),
            )
        })?;
        let now = unix_now();
        let claims = Claims {
            sub: principal.subject.clone(),
            account_id: principal.account_id,
            user_id: principal.user_id,
            roles: principal
                .roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            iss: self.expected.issuer.clone(),
            aud: self.expected.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .map_err(|e| TokenError::CannotMint(e.to_string()))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn principal(claims: Claims) -> Principal {
    Principal {
        subject: claims.sub,
        account_id: claims.account_id,
        user_id: claims.user_id,
        // Unknown role names are ignored so that newer issuers do not lock callers out.
        roles: claims
            .roles
            .iter()
            .filter_map(|r| Role::from_token(r))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(Some(&Secret::new(secret.to_owned())), &[]).unwrap()
    }

    fn admin() -> Principal {
        Principal {
            subject: "user:1:7".into(),
            account_id: Some(1),
            user_id: Some(7),
            roles: vec![Role::SuperAdmin],
        }
    }

    #[test]
    fn round_trip() {
        let keys = keys("s3cret-s3cret-s3cret-s3cret-s3cret");
        let token = keys.mint(&admin(), Duration::from_secs(60)).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), admin());
    }

    #[test]
    fn refuses_other_secrets_garbage_and_expiry() {
        let token = keys("one-secret-one-secret-one-secret")
            .mint(&admin(), Duration::from_secs(60))
            .unwrap();
        let other = keys("another-secret-another-secret-xx");
        assert!(matches!(other.verify(&token), Err(TokenError::Invalid(_))));
        assert!(matches!(
            other.verify("not.a.jwt"),
            Err(TokenError::Invalid(_))
        ));
        let expired = Claims {
            sub: "x".into(),
            account_id: Some(1),
            user_id: None,
            roles: vec![],
            iat: 1,
            exp: 2,
            iss: None,
            aud: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert_eq!(other.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let keys = keys("s3cret-s3cret-s3cret-s3cret-s3cret");
        let token = keys.mint(&admin(), Duration::from_secs(60)).unwrap();
        let now = unix_now();
        assert_eq!(keys.verify_at(&token, now).unwrap(), admin());
        assert!(
            keys.verified.get(token.as_str()).is_some(),
            "not remembered"
        );
        let at_leeway_end = now + 60 + LEEWAY_SECS;
        assert_eq!(keys.verify_at(&token, at_leeway_end).unwrap(), admin());
        assert_eq!(
            keys.verify_at(&token, at_leeway_end + 1),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn only_tokens_that_verified_are_remembered() {
        let keys = keys("s3cret-s3cret-s3cret-s3cret-s3cret");
        let token = keys.mint(&admin(), Duration::from_secs(60)).unwrap();
        keys.verify(&token).unwrap();
        // The same claims under a signature one character off.
        let at = token.len() - 10;
        let swapped = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{swapped}{}", &token[..at], &token[at + 1..]);
        assert!(matches!(keys.verify(&forged), Err(TokenError::Invalid(_))));
        assert!(keys.verified.get(forged.as_str()).is_none());
        assert_eq!(keys.verified.len(), 1);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let secret = "s3cret-s3cret-s3cret-s3cret-s3cret";
        let expecting = |issuer: Option<&str>, audience: Option<&str>| {
            keys(secret).expecting(Expected {
                issuer: issuer.map(str::to_owned),
                audience: audience.map(str::to_owned),
            })
        };
        let strict = expecting(Some("https://id.example"), Some("mailconnect"));
        let bare = keys(secret)
            .mint(&admin(), Duration::from_secs(60))
            .unwrap();
        assert!(matches!(strict.verify(&bare), Err(TokenError::Invalid(_))));
        for (issuer, audience) in [
            (Some("https://other.example"), Some("mailconnect")),
            (Some("https://id.example"), Some("another-service")),
            (Some("https://id.example"), None),
            (None, Some("mailconnect")),
        ] {
            let token = expecting(issuer, audience)
                .mint(&admin(), Duration::from_secs(60))
                .unwrap();
            assert!(
                matches!(strict.verify(&token), Err(TokenError::Invalid(_))),
                "{issuer:?} {audience:?}"
            );
        }
        let token = strict.mint(&admin(), Duration::from_secs(60)).unwrap();
        assert_eq!(strict.verify(&token).unwrap(), admin());
        // Unconfigured, neither is checked: tokens with and without them verify.
        assert_eq!(keys(secret).verify(&token).unwrap(), admin());
        assert_eq!(keys(secret).verify(&bare).unwrap(), admin());
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        let short = Secret::new("x".repeat(MIN_SECRET_BYTES - 1));
        let err = TokenKeys::new(Some(&short), &[]).err().unwrap();
        assert!(err.contains("at least 32"), "{err}");
        assert!(TokenKeys::new(Some(&Secret::new("x".repeat(MIN_SECRET_BYTES))), &[]).is_ok());
    }

    #[test]
    fn public_keys_only_cannot_mint_and_bad_pem_is_named() {
        let err = TokenKeys::new(None, &["nope".to_owned()]).err().unwrap();
        assert!(err.contains("#1"), "{err}");
        assert!(TokenKeys::new(None, &[]).is_err());
    }
}
