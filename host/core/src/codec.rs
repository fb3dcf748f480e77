//! The versioned binary encoding of everything wasmraft persists or replicates:
//! log entries, votes, state records and responses.
//!
//! Layout: one version byte, then the value in postcard (compact, varint
//! integers, no field names). A reader refuses a version it does not know
//! instead of misreading it, so the format can evolve: a new version adds a
//! decoder here and keeps the old one.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version written by this build.
pub const ENCODING_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record: missing the encoding version byte")]
    Empty,
    #[error("unknown encoding version {found} (this build reads version {ENCODING_VERSION})")]
    UnknownVersion { found: u8 },
    #[error("malformed record: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes `value` with the current version byte.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serialising plain data into a growable buffer has no failure mode
    // except a `Serialize` impl that reports one, which none of ours does.
    postcard::to_extend(value, vec![ENCODING_VERSION])
        .expect("encoding wasmraft data into memory cannot fail")
}

/// Encodes `value` into `buffer`, replacing its content: lets a writer of
/// many records reuse one allocation.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, buffer: &mut Vec<u8>) {
    buffer.clear();
    buffer.push(ENCODING_VERSION);
    let taken = std::mem::take(buffer);
    *buffer =
        postcard::to_extend(value, taken).expect("encoding wasmraft data into memory cannot fail");
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&ENCODING_VERSION, body)) => Ok(postcard::from_bytes(body)?),
        Some((&found, _)) => Err(CodecError::UnknownVersion { found }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Command, Invoke, Request, SessionId};

    fn sample() -> Request {
        Request {
            timestamp_ms: 1_700_000_000_000,
            caller: "alice".into(),
            command: Command::Invoke(Invoke {
                module: "counter".into(),
                input: br#"{"op":"add","by":1}"#.to_vec(),
                session: Some(SessionId {
                    client_id: "c1".into(),
                    sequence: 7,
                }),
            }),
        }
    }

    #[test]
    fn round_trips_and_is_compact() {
        let request = sample();
        let bytes = encode(&request);
        assert_eq!(bytes[0], ENCODING_VERSION);
        // Field names never reach the wire: the whole command is barely larger
        // than its strings.
        assert!(bytes.len() < 50, "encoded size {}", bytes.len());
        assert_eq!(decode::<Request>(&bytes).unwrap(), request);
        let mut buffer = vec![1, 2, 3];
        encode_into(&request, &mut buffer);
        assert_eq!(buffer, bytes);
    }

    #[test]
    fn refuses_unknown_versions_and_garbage() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(CodecError::UnknownVersion { found: 9 })
        ));
        assert!(matches!(decode::<Request>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<Request>(&[ENCODING_VERSION, 0xff, 0xff]),
            Err(CodecError::Malformed(_))
        ));
    }
}
