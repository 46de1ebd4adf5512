//! The bounded reader every decoder is built on: each read checks what is left
//! first, so any input gives a value or a [`DecodeError`], never a panic, and no
//! allocation is made before its size has been checked against the input.

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("input ends at byte {at}, {needed} more bytes needed")]
    UnexpectedEnd {
        /// Offset where the field started.
        at: usize,
        /// Bytes the field needs.
        needed: usize,
    },
    /// A length or count above its hard limit.
    #[error("{what} is {len}, more than the limit {max}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// The value found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The input does not start with the expected magic bytes.
    #[error("not a {0}: bad magic bytes")]
    BadMagic(&'static str),
    /// An encoding version this build does not know.
    #[error("unknown version {0}")]
    BadVersion(u8),
    /// A text field is not UTF-8.
    #[error("{0} is not UTF-8")]
    BadUtf8(&'static str),
    /// Bytes are left after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// The fields decoded but break a rule of the format.
    #[error("{0}")]
    Invalid(String),
    /// A manifest whose entries decoded but break a manifest rule: one hash
    /// with two sizes, a file or a bundle over its size cap, a file that is
    /// also a folder.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
}

/// A cursor over untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts at the first byte of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Self { input, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEnd {
                at: self.pos,
                needed: n,
            });
        }
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// UTF-8 text of `len` bytes.
    pub fn str(&mut self, len: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(len)?).map_err(|_| DecodeError::BadUtf8(what))
    }

    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Fails with [`DecodeError::TooLarge`] when `len > max`.
pub fn check_limit(what: &'static str, len: u64, max: u64) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}
