//! Signing `generic` webhooks per the Standard Webhooks specification
//! (<https://www.standardwebhooks.com/>): HMAC-SHA256 over `{id}.{timestamp}.{body}`,
//! sent as `webhook-signature: v1,<base64>`, with secrets written `whsec_<base64>`.
//!
//! A receiver verifies with its own Standard Webhooks (or Svix) library, so every
//! byte here must match the reference implementations; the tests pin their
//! published vectors.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET_PREFIX: &str = "whsec_";
/// The specification's bounds for a symmetric secret: at least 192 bits, at most 512.
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// Decode a `whsec_<base64>` secret: standard base64 with `=` padding, 24 to 64
/// bytes once decoded. Surrounding whitespace (a newline left by `echo` into an
/// environment file) is ignored.
///
/// Error messages never contain the secret, nor any part of it: they end up in
/// config diagnostics and logs.
pub fn parse_secret(s: &str) -> Result<Vec<u8>, SecretError> {
    let Some(encoded) = s.trim().strip_prefix(SECRET_PREFIX) else {
        return Err(SecretError::NoPrefix);
    };
    // base64's own error names the offending byte and offset, which would leak a
    // piece of the secret: only say that it is not base64.
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| SecretError::NotBase64)?;
    if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
        return Err(SecretError::Length(bytes.len()));
    }
    Ok(bytes)
}

/// Why a signing secret was refused. No variant carries any part of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a signing secret must be written {prefix}<base64> (the {prefix} prefix is missing)",
        prefix = SECRET_PREFIX
    )]
    NoPrefix,
    #[error(
        "the part after {prefix} is not standard base64 (A-Z a-z 0-9 + /, with = padding)",
        prefix = SECRET_PREFIX
    )]
    NotBase64,
    #[error(
        "a signing secret must decode to {min} to {max} bytes, this one has {0}",
        min = MIN_SECRET_BYTES,
        max = MAX_SECRET_BYTES
    )]
    Length(usize),
}

/// The `webhook-signature` header value: `v1,<base64 HMAC-SHA256>` of
/// `{msg_id}.{timestamp}.{body}` for each secret, space-separated. During a
/// rotation every secret signs, so receivers holding either the old or the new
/// one accept the message. Empty when `secrets` is.
pub fn signature(secrets: &[Vec<u8>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    secrets
        .iter()
        .map(|secret| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
            for part in [msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body] {
                mac.update(part);
            }
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh message id: `msg_` and 26 lowercase alphanumeric characters (about 134
/// random bits). It is the receivers' idempotency key, so the caller stores it
/// with the notification and sends the same id on every retry.
pub fn new_message_id() -> String {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    const LEN: usize = 26;
    let mut id = String::with_capacity(4 + LEN);
    id.push_str("msg_");
    let mut produced = 0;
    while produced < LEN {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        // Bytes 6 and 8 carry the UUID version and variant bits, so they are not
        // uniformly random; the other 14 are. Bytes of 252 and above are dropped
        // so that `% 36` is unbiased (252 = 7 * 36).
        for (i, b) in bytes.into_iter().enumerate() {
            if produced == LEN {
                break;
            }
            if i == 6 || i == 8 || b >= 252 {
                continue;
            }
            id.push(char::from(ALPHABET[usize::from(b % 36)]));
            produced += 1;
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_svix_reference_vector() {
        // The vector of the Svix / Standard Webhooks libraries' sign tests.
        let secret = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signature(
                &[secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn reproduces_the_standard_webhooks_rust_library_vector() {
        // standard-webhooks/standard-webhooks, libraries/rust, `test_sign`.
        let secret = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signature(
                &[secret],
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn a_rotation_sends_one_signature_per_secret_in_order() {
        let new = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let old = parse_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let both = signature(&[new.clone(), old.clone()], "msg_x", 1614265330, body);
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[new], "msg_x", 1614265330, body));
        assert_eq!(parts[1], signature(&[old], "msg_x", 1614265330, body));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(signature(&[], "msg_x", 1614265330, body), "");
    }

    #[test]
    fn the_timestamp_and_id_are_signed() {
        let s = vec![parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()];
        let a = signature(&s, "msg_a", 1, b"{}");
        assert_ne!(a, signature(&s, "msg_a", 2, b"{}"));
        assert_ne!(a, signature(&s, "msg_b", 1, b"{}"));
        assert_ne!(a, signature(&s, "msg_a", 1, b"{ }"));
    }

    #[test]
    fn secrets_at_the_bounds_are_accepted_and_whitespace_is_ignored() {
        let min = format!("whsec_{}", STANDARD.encode([7u8; 24]));
        let max = format!("whsec_{}", STANDARD.encode([7u8; 64]));
        assert_eq!(parse_secret(&min).unwrap().len(), 24);
        assert_eq!(parse_secret(&max).unwrap().len(), 64);
        assert_eq!(parse_secret(&format!(" {min}\n")).unwrap().len(), 24);
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        let cases = [
            // The base64 is fine, the prefix is missing.
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
            // Not base64, not standard base64, missing padding.
            "whsec_MfKQ9r8GKYqrTwjUPD8I!PZIo2LaLaSw".to_string(),
            "whsec_MfKQ9r8GKYqrTwjUPD8I_PZIo2LaLaSw".to_string(),
            format!("whsec_{}", STANDARD.encode([1u8; 25]).trim_end_matches('=')),
            // Too short, too long, empty.
            format!("whsec_{}", STANDARD.encode([1u8; 23])),
            format!("whsec_{}", STANDARD.encode([1u8; 65])),
            "whsec_".to_string(),
            String::new(),
        ];
        for case in &cases {
            let err = parse_secret(case).expect_err(case).to_string();
            let encoded = case.strip_prefix("whsec_").unwrap_or(case);
            // Any 6-character piece of the input would be a leak.
            if encoded.len() >= 6 {
                for start in 0..=encoded.len() - 6 {
                    let piece = &encoded[start..start + 6];
                    assert!(!err.contains(piece), "{err:?} echoes {piece:?} of {case:?}");
                }
            }
        }
        assert!(
            parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap_err()
                .to_string()
                .contains("prefix")
        );
        assert!(
            parse_secret("whsec_!!!!")
                .unwrap_err()
                .to_string()
                .contains("base64")
        );
        assert!(
            parse_secret(&format!("whsec_{}", STANDARD.encode([1u8; 16])))
                .unwrap_err()
                .to_string()
                .contains("24 to 64 bytes")
        );
    }

    #[test]
    fn message_ids_are_msg_and_26_lowercase_alphanumerics_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let id = new_message_id();
            let rest = id.strip_prefix("msg_").expect(&id);
            assert_eq!(rest.len(), 26, "{id}");
            assert!(
                rest.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
                "{id}"
            );
            assert!(seen.insert(id));
        }
        // Every character of the alphabet turns up: the mapping is not stuck on a range.
        let all: String = seen.iter().map(|id| &id[4..]).collect();
        for c in "0123456789abcdefghijklmnopqrstuvwxyz".chars() {
            assert!(all.contains(c), "{c} never appears");
        }
    }
}
