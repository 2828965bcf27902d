//! Credentials sealed at rest: each secret field encrypted with XChaCha20-Poly1305 under a key
//! id, with the account, the connection and the field bound in as associated data, so that a
//! ciphertext copied to another row or column does not open.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::secret::Secret;

const NONCE_LEN: usize = 24;
/// Longest key id: they are stored beside every ciphertext.
const MAX_KEY_ID: usize = 32;

/// The encryption keys: the first seals, every one opens (old keys stay until `rotate-keys`
/// re-sealed everything under the first).
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Zeroizing<[u8; 32]>)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keyring({ids:?})")
    }
}

/// What a sealed field is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub account_id: i64,
    pub connection_id: i64,
    /// The column, e.g. `password`, `refresh_token`.
    pub field: &'a str,
}

impl Binding<'_> {
    fn associated_data(&self) -> Vec<u8> {
        format!(
            "mailconnect/v1 account={} connection={} field={}",
            self.account_id, self.connection_id, self.field
        )
        .into_bytes()
    }
}

/// A ciphertext (nonce first) and the id of the key that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no encryption key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("the ciphertext does not open with its key: it was altered or belongs to another row")]
    Corrupt,
}

impl Keyring {
    /// `id:base64-32-bytes`, comma-separated; the first seals.
    pub fn parse(text: &Secret) -> Result<Self, String> {
        let mut keys: Vec<(String, Zeroizing<[u8; 32]>)> = Vec::new();
        for (index, entry) in text.expose().split(',').enumerate() {
            let entry = entry.trim();
            let position = index + 1;
            let (id, encoded) = entry
                .split_once(':')
                .ok_or_else(|| format!("key {position} is not `id:base64`"))?;
            let valid_id = !id.is_empty()
                && id.len() <= MAX_KEY_ID
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_id {
                return Err(format!(
                    "key {position}: the id must be 1 to {MAX_KEY_ID} letters, digits, '-' or '_'"
                ));
            }
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| format!("key {id:?} is not base64"))?,
            );
            let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                format!(
                    "key {id:?} has {} bytes; keys are 32 random bytes (`openssl rand -base64 32`)",
                    bytes.len()
                )
            })?;
            if keys.iter().any(|(seen, _)| seen == id) {
                return Err(format!("key id {id:?} is given twice"));
            }
            keys.push((id.to_owned(), Zeroizing::new(key)));
        }
        if keys.is_empty() {
            return Err("no key given".to_owned());
        }
        Ok(Self { keys })
    }

    /// A new random key in the configuration's format, `id:base64`.
    pub fn generate_entry(id: &str) -> Secret {
        let key = Zeroizing::new(rand::random::<[u8; 32]>());
        Secret::new(format!("{id}:{}", STANDARD.encode(key.as_slice())))
    }

    /// The id of the key that seals.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].0
    }

    fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(key.into())
    }

    pub fn seal(&self, plaintext: &[u8], binding: Binding<'_>) -> Sealed {
        let (id, key) = &self.keys[0];
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = binding.associated_data();
        let ciphertext = Self::cipher(key)
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message that fits in memory");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: id.clone(),
            bytes,
        }
    }

    pub fn open(
        &self,
        sealed: &Sealed,
        binding: Binding<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.bytes.len() < NONCE_LEN {
            return Err(OpenError::Corrupt);
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError::Corrupt)?;
        let aad = binding.associated_data();
        Self::cipher(key)
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError::Corrupt)
    }

    /// Opens a field that holds text.
    pub fn open_secret(&self, sealed: &Sealed, binding: Binding<'_>) -> Result<Secret, OpenError> {
        let bytes = self.open(sealed, binding)?;
        std::str::from_utf8(&bytes)
            .map(|text| Secret::new(text.to_owned()))
            .map_err(|_| OpenError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(connection_id: i64, field: &str) -> Binding<'_> {
        Binding {
            account_id: 1,
            connection_id,
            field,
        }
    }

    fn ring(text: &str) -> Keyring {
        Keyring::parse(&Secret::new(text.to_owned())).unwrap()
    }

    #[test]
    fn seals_under_the_first_key_and_opens_only_in_its_own_row() {
        let new = Keyring::generate_entry("k2");
        let old = Keyring::generate_entry("k1");
        let keys = ring(&format!("{},{}", new.expose(), old.expose()));
        let sealed = keys.seal(b"hunter2", binding(7, "password"));
        assert_eq!(sealed.key_id, "k2");
        assert!(!sealed.bytes.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            keys.open(&sealed, binding(7, "password"))
                .unwrap()
                .as_slice(),
            b"hunter2"
        );
        assert_eq!(
            keys.open(&sealed, binding(8, "password")),
            Err(OpenError::Corrupt),
            "another connection"
        );
        assert_eq!(
            keys.open(&sealed, binding(7, "refresh_token")),
            Err(OpenError::Corrupt),
            "another column"
        );
        let only_old = ring(old.expose());
        assert_eq!(
            only_old.open(&sealed, binding(7, "password")),
            Err(OpenError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn refuses_malformed_key_lists_without_echoing_keys() {
        for (text, expected) in [
            ("", "not `id:base64`"),
            ("k1", "not `id:base64`"),
            ("k1:!!!", "not base64"),
            ("k1:AAAA", "has 3 bytes"),
            ("bad id:AAAA", "the id must be"),
        ] {
            let err = Keyring::parse(&Secret::new(text.to_owned())).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let entry = Keyring::generate_entry("same");
        let err = Keyring::parse(&Secret::new(format!(
            "{},{}",
            entry.expose(),
            entry.expose()
        )))
        .unwrap_err();
        assert!(err.contains("twice"), "{err}");
        assert!(!err.contains(entry.expose().split_once(':').unwrap().1));
    }
}
