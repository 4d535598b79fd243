//! A bounded reader and writer for the length-prefixed binary encodings used by tokens and frames.

use thiserror::Error;

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated: input ended inside {0}")]
    Truncated(&'static str),
    /// A length prefix exceeded the bound for its field.
    #[error("{field} is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// The field being decoded.
        field: &'static str,
        /// The length found.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A string field was not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// Bytes were left after the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    /// An enum or version tag had an unknown value.
    #[error("unknown {field} {value}")]
    Unknown {
        /// The field being decoded.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// Reads values from a byte slice, never panicking and never allocating more than the input holds.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(field));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Takes one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Takes a big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Takes a big-endian u32.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Takes a big-endian i32.
    pub fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Takes a big-endian u64.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Takes a byte string with a u16 length prefix bounded by `max`.
    pub fn vec16(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.bytes(len, field)
    }

    /// Takes a UTF-8 string with a u8 length prefix bounded by `max`.
    pub fn str8(&mut self, max: usize, field: &'static str) -> Result<String, DecodeError> {
        let len = usize::from(self.u8(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        let b = self.bytes(len, field)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8(field))
    }

    /// Fails unless every byte has been read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// Appends a u8-length-prefixed string. Panics only on a caller bug (a string over 255 bytes),
/// which encoders rule out by validating lengths when values are built.
pub(crate) fn put_str8(out: &mut Vec<u8>, s: &str) {
    let len = u8::try_from(s.len()).expect("string field over 255 bytes");
    out.push(len);
    out.extend_from_slice(s.as_bytes());
}

/// Appends a u16-length-prefixed byte string.
pub(crate) fn put_vec16(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).expect("byte field over 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
}
