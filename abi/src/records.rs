//! A tag-length-value record list: the one encoding used for every variable-length table in
//! the ABI (bundle manifest, run configuration, exit records). Each record is a `u32` tag, a
//! `u32` length and that many bytes. Unknown tags are skipped by readers, so later versions
//! can add records without breaking older kernels.

use crate::{DecodeError, le_u32};

/// One decoded record, borrowing its payload from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub tag: u32,
    pub value: &'a [u8],
}

/// Iterator over the records in a buffer. Yields an error once and then stops if the buffer
/// ends inside a record.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Records { rest: bytes }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = (|| {
            let tag = le_u32(self.rest, 0)?;
            let len = le_u32(self.rest, 4)? as usize;
            let value = self.rest.get(8..8 + len).ok_or(DecodeError::Truncated)?;
            Ok((Record { tag, value }, 8 + len))
        })();
        match parsed {
            Ok((record, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(record))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Appends one record to `out`.
#[cfg(feature = "alloc")]
pub fn push_record(out: &mut alloc::vec::Vec<u8>, tag: u32, value: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn round_trip_and_truncation() {
        let mut buf = Vec::new();
        push_record(&mut buf, 7, b"abc");
        push_record(&mut buf, 9, b"");
        let all: Vec<_> = Records::new(&buf).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0],
            Ok(Record {
                tag: 7,
                value: b"abc"
            })
        );
        assert_eq!(all[1], Ok(Record { tag: 9, value: b"" }));

        let cut = &buf[..buf.len() - 1];
        let mut it = Records::new(cut);
        assert_eq!(
            it.next(),
            Some(Ok(Record {
                tag: 7,
                value: b"abc"
            }))
        );
        assert_eq!(it.next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(it.next(), None);
    }
}
