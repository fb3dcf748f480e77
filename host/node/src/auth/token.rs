//! Bearer tokens: `wr_<id>_<secret>`, where the id (16 hex digits, 64
//! random bits) names the token in the policy and in `RevokeToken`, and the
//! secret (64 hex digits, 256 random bits) proves it. The cluster stores
//! only the secret's sha256, under the id; a presented token is found by its
//! id and its secret's hash compared in constant time, so neither a lookup
//! nor a comparison leaks how much of a guess was right.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::command::check::TOKEN_ID_CHARS;

/// What every token starts with, so that one pasted in the wrong place
/// (or leaked in a log) is recognisable.
const PREFIX: &str = "wr_";
/// The hex digits of a token's secret.
const SECRET_CHARS: usize = 64;

/// A token with its secret, as shown once to the caller who created it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a presented token is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed bearer token: expected `wr_` followed by 16 and 64 hex digits joined by `_`, as `access token create` prints it"
)]
pub struct MalformedToken;

/// No randomness to make a token from.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for a token: {0}")]
pub struct NoRandomness(String);

impl Token {
    /// A new token of fresh random id and secret.
    pub fn generate() -> Result<Self, NoRandomness> {
        let mut id = [0u8; TOKEN_ID_CHARS / 2];
        let mut secret = [0u8; SECRET_CHARS / 2];
        getrandom::fill(&mut id).map_err(|error| NoRandomness(error.to_string()))?;
        getrandom::fill(&mut secret).map_err(|error| NoRandomness(error.to_string()))?;
        Ok(Self {
            id: hex::encode(id),
            secret: hex::encode(secret),
        })
    }

    /// Reads a token as [`Token`]'s `Display` writes it.
    pub fn parse(text: &str) -> Result<Self, MalformedToken> {
        let rest = text.strip_prefix(PREFIX).ok_or(MalformedToken)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedToken)?;
        let hex = |part: &str, chars: usize| {
            part.len() == chars
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(id, TOKEN_ID_CHARS) || !hex(secret, SECRET_CHARS) {
            return Err(MalformedToken);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The token's public name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// sha256 of the secret: what the cluster stores.
    pub fn secret_sha256(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }

    /// Whether this token's secret is the one `stored` is the hash of,
    /// compared in constant time.
    pub fn proves(&self, stored: &[u8; 32]) -> bool {
        self.secret_sha256().ct_eq(stored).into()
    }
}

impl fmt::Display for Token {
    /// The whole token, secret included: for the one place it is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}_{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_prove_only_their_own_hash() {
        let token = Token::generate().unwrap();
        let text = token.to_string();
        assert_eq!(text.len(), 3 + 16 + 1 + 64);
        let parsed = Token::parse(&text).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.proves(&token.secret_sha256()));
        let other = Token::generate().unwrap();
        assert!(!parsed.proves(&other.secret_sha256()));
        assert_ne!(other.id(), token.id());
        // The secret never shows in a debug line.
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = Token::generate().unwrap().to_string();
        let upper = good.to_uppercase().replacen("WR_", "wr_", 1);
        for bad in [
            "",
            "wr_",
            "Bearer x",
            &good[3..],
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.replacen('_', "-", 2),
            &upper,
            &format!("wr_{}_{}", "g".repeat(16), "0".repeat(64)),
        ] {
            assert_eq!(Token::parse(bad), Err(MalformedToken), "{bad}");
        }
    }
}
