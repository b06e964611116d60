//! The on-disk encoding. Every record starts with the format byte, so a later format can be told
//! apart and migrated. Integers are little-endian.

use super::{EmbeddedError, Event, EventKind, KeyValue};

/// The format this build writes (also stored in the meta table).
pub const FORMAT: i64 = 1;
const TAG: u8 = FORMAT as u8;

/// A kv record: tag, create revision, mod revision, version, value bytes.
pub fn encode_kv(create: i64, modified: i64, version: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + value.len());
    out.push(TAG);
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, EmbeddedError> {
    let mut r = Reader::new(bytes, "kv")?;
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: r.i64()?,
        mod_revision: r.i64()?,
        version: r.i64()?,
        value: r.rest().to_vec(),
    })
}

/// A history record: tag, event count, then per event: kind (0 put, 1 delete), key length and
/// bytes, create revision, mod revision, version, value length and bytes.
pub fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = vec![TAG];
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&(e.kv.key.len() as u32).to_le_bytes());
        out.extend_from_slice(e.kv.key.as_bytes());
        out.extend_from_slice(&e.kv.create_revision.to_le_bytes());
        out.extend_from_slice(&e.kv.mod_revision.to_le_bytes());
        out.extend_from_slice(&e.kv.version.to_le_bytes());
        out.extend_from_slice(&(e.kv.value.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.kv.value);
    }
    out
}

pub fn decode_events(bytes: &[u8]) -> Result<Vec<Event>, EmbeddedError> {
    let mut r = Reader::new(bytes, "history")?;
    let count = r.u32()? as usize;
    let mut events = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let kind = match r.take(1)?[0] {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            _ => return Err(r.corrupt()),
        };
        let key_len = r.u32()? as usize;
        let key = std::str::from_utf8(r.take(key_len)?)
            .map_err(|_| r.corrupt())?
            .to_string();
        let create_revision = r.i64()?;
        let mod_revision = r.i64()?;
        let version = r.i64()?;
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?.to_vec();
        events.push(Event {
            kind,
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision,
                version,
            },
        });
    }
    Ok(events)
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Result<Self, EmbeddedError> {
        match bytes.split_first() {
            Some((&TAG, rest)) => Ok(Self { bytes: rest, what }),
            _ => Err(EmbeddedError::Corrupt { what }),
        }
    }
    fn corrupt(&self) -> EmbeddedError {
        EmbeddedError::Corrupt { what: self.what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], EmbeddedError> {
        if self.bytes.len() < n {
            return Err(self.corrupt());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn i64(&mut self) -> Result<i64, EmbeddedError> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(
            b.try_into().map_err(|_| self.corrupt())?,
        ))
    }
    fn u32(&mut self) -> Result<u32, EmbeddedError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(
            b.try_into().map_err(|_| self.corrupt())?,
        ))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }
}
