//! Proving a team controls a custom from address (seed 001): a 6-digit code mailed to it, kept
//! only as a salted hash bound to the connection and the address, short-lived, with few
//! attempts, and a limit on the codes one address receives.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::FieldViolation;

/// How long a code is accepted.
pub const CODE_TTL: Duration = Duration::from_secs(15 * 60);
/// Guesses allowed per code (a code has 10^6 values: five guesses succeed by chance 1 in 200,000).
pub const MAX_ATTEMPTS: i32 = 5;
/// At most `MAX_SENDS` codes to one address within `SEND_WINDOW`, whoever asks: the service must
/// not become a way to flood a mailbox.
pub const MAX_SENDS: i64 = 5;
pub const SEND_WINDOW: Duration = Duration::from_secs(60 * 60);

/// A code as typed: 6 digits, surrounding white space ignored.
pub fn parse_code(field: &str, raw: &str) -> Result<String, FieldViolation> {
    let code = raw.trim();
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(code.to_owned())
    } else {
        Err(FieldViolation::new(
            field,
            "is the 6-digit code from the verification email",
        ))
    }
}

/// The stored form of `code`: SHA-256 over the salt, the connection, the address and the code,
/// so that a code for one connection or address never verifies another.
pub fn code_hash(salt: &[u8], connection_id: i64, address: &str, code: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(connection_id.to_be_bytes());
    hasher.update(address.as_bytes());
    hasher.update([0]);
    hasher.update(code.as_bytes());
    hasher.finalize().to_vec()
}

/// The verification email: subject and text.
pub fn code_mail(address: &str, code: &str) -> (String, String) {
    (
        format!("Your verification code: {code}"),
        format!(
            "Someone asked to send conversations email as {address}.\r\n\r\nEnter this code to confirm you control the address: {code}\r\n\r\nIt expires in {} minutes. If you did not ask for it, ignore this email.\r\n",
            CODE_TTL.as_secs() / 60
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits() {
        assert_eq!(parse_code("code", " 012345\n").unwrap(), "012345");
        for bad in ["", "12345", "1234567", "12345a", "12 345"] {
            assert!(parse_code("code", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hashes_bind_the_connection_and_the_address() {
        let hash = code_hash(b"salt", 1, "a@x.example", "123456");
        assert_eq!(hash, code_hash(b"salt", 1, "a@x.example", "123456"));
        assert_ne!(hash, code_hash(b"salt", 2, "a@x.example", "123456"));
        assert_ne!(hash, code_hash(b"salt", 1, "b@x.example", "123456"));
        assert_ne!(hash, code_hash(b"tlas", 1, "a@x.example", "123456"));
        assert_ne!(hash, code_hash(b"salt", 1, "a@x.example", "123457"));
        assert!(!hash.windows(6).any(|w| w == b"123456"));
    }
}
