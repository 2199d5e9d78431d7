//! Secret values: encrypted at rest with AES-256-GCM under `[config] secret_key`, bound to
//! their namespace, environment and key (the associated data), and shown as `"***"` to anyone
//! without the `config:secrets` scope.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// What a secret shows to whoever may not see it.
pub const MASK: &str = "***";

const PREFIX: &str = "enc:v1:";

/// The node's key for secret values.
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// From `[config] secret_key`: 32 bytes, base64.
    pub fn new(key_b64: &str) -> Result<Self, String> {
        let key = STANDARD
            .decode(key_b64.trim())
            .map_err(|e| format!("[config] secret_key is not base64: {e}"))?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| {
            format!(
                "[config] secret_key must be 32 bytes (base64 of 32 random bytes: `openssl rand -base64 32`), not {}",
                key.len()
            )
        })?;
        Ok(Self { cipher })
    }

    /// `plain` (JSON text) sealed for `(ns, env, key)`.
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the OS random source");
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a bounded value");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    /// The JSON text sealed in `sealed` for `(ns, env, key)`; `None` when it is not sealed by
    /// this key (another key, or tampered with).
    pub fn open(&self, sealed: &str, aad: &str) -> Option<String> {
        let bytes = STANDARD.decode(sealed.strip_prefix(PREFIX)?).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, body) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: body,
                    aad: aad.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

/// The associated data of a secret: where it lives.
pub fn aad(ns: &str, env: &str, key: &str) -> String {
    format!("{ns}/{env}/{key}")
}

/// A stored value as JSON for a reader: secrets opened when `reveal` (and the key opens them),
/// else masked.
pub fn shown(sealer: Option<&Sealer>, text: &str, secret: bool, reveal: bool, aad: &str) -> Value {
    if !secret {
        return serde_json::from_str(text).unwrap_or(Value::Null);
    }
    match (reveal, sealer.and_then(|s| s.open(text, aad))) {
        (true, Some(plain)) => serde_json::from_str(&plain).unwrap_or(Value::Null),
        _ => Value::from(MASK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let s = Sealer::new(KEY).unwrap();
        let sealed = s.seal("\"hunter2\"", "app/prod/db.password");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("hunter2"));
        assert_ne!(
            sealed,
            s.seal("\"hunter2\"", "app/prod/db.password"),
            "a fresh nonce each time"
        );
        assert_eq!(
            s.open(&sealed, "app/prod/db.password").as_deref(),
            Some("\"hunter2\"")
        );
        assert_eq!(
            s.open(&sealed, "app/dev/db.password"),
            None,
            "bound to its key"
        );
        assert_eq!(
            shown(Some(&s), &sealed, true, false, "app/prod/db.password"),
            Value::from(MASK)
        );
        assert_eq!(
            shown(Some(&s), &sealed, true, true, "app/prod/db.password"),
            Value::from("hunter2")
        );
        assert!(Sealer::new("c2hvcnQ=").unwrap_err().contains("32 bytes"));
        assert!(Sealer::new("not base64!").is_err());
    }
}
