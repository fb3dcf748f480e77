//! A fixed-size message buffer for panic messages: formatting into it never allocates,
//! and it keeps at most what the host's `abort` keeps (4 KiB), cut on a character
//! boundary.

use crate::abi::ABORT_MESSAGE_MAX;

/// Up to [`ABORT_MESSAGE_MAX`] bytes of UTF-8; writes past the end are dropped.
pub(crate) struct MessageBuffer {
    bytes: [u8; ABORT_MESSAGE_MAX],
    len: usize,
}

impl MessageBuffer {
    pub(crate) const fn new() -> Self {
        MessageBuffer {
            bytes: [0; ABORT_MESSAGE_MAX],
            len: 0,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl core::fmt::Write for MessageBuffer {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        let room = ABORT_MESSAGE_MAX - self.len;
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn truncates_on_a_character_boundary() {
        let mut buffer = MessageBuffer::new();
        let filler = "a".repeat(ABORT_MESSAGE_MAX - 1);
        buffer.write_str(&filler).unwrap();
        buffer.write_str("é and more").unwrap();
        assert_eq!(buffer.as_bytes().len(), ABORT_MESSAGE_MAX - 1);
        assert!(core::str::from_utf8(buffer.as_bytes()).is_ok());
    }
}
