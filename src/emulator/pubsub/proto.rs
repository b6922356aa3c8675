//! Hand-written protobuf for the messages `Publish` carries, so the
//! emulator needs no code generator:
//!
//! ```proto
//! message PublishRequest  { string topic = 1; repeated PubsubMessage messages = 2; }
//! message PubsubMessage   { bytes data = 1; map<string, string> attributes = 2;
//!                           string message_id = 3; Timestamp publish_time = 4;
//!                           string ordering_key = 5; }
//! message PublishResponse { repeated string message_ids = 1; }
//! ```
//!
//! Fields it does not know are skipped by their wire type, as every
//! protobuf reader must; a truncated or malformed message is an error.

use std::collections::BTreeMap;

/// A decoded `PublishRequest`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PublishRequest<'a> {
    pub(crate) topic: String,
    pub(crate) messages: Vec<Message<'a>>,
}

/// A decoded `PubsubMessage` (the fields a publisher sets).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) attributes: BTreeMap<String, String>,
    pub(crate) ordering_key: String,
}

/// Why a message could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodeError(pub(crate) &'static str);

/// A field's value, by wire type.
enum Value<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(DecodeError("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError("field runs past the end of the message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => {
                self.varint()?;
                Value::Varint
            }
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| DecodeError("length does not fit in memory"))?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            _ => return Err(DecodeError("unsupported wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn string(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError("string field is not UTF-8"))
}

/// Decodes a `PublishRequest`.
pub(crate) fn decode_publish_request(buf: &[u8]) -> Result<PublishRequest<'_>, DecodeError> {
    let mut req = PublishRequest::default();
    let mut r = Reader { buf };
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => req.topic = string(b)?,
            (2, Value::Bytes(b)) => req.messages.push(decode_message(b)?),
            (1 | 2, _) => return Err(DecodeError("wrong wire type in PublishRequest")),
            _ => {}
        }
    }
    Ok(req)
}

fn decode_message(buf: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut m = Message::default();
    let mut r = Reader { buf };
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b)) => m.data = b,
            (2, Value::Bytes(b)) => {
                // A map entry is a message { key = 1; value = 2; }.
                let (mut key, mut val) = (String::new(), String::new());
                let mut e = Reader { buf: b };
                while let Some((f, v)) = e.field()? {
                    match (f, v) {
                        (1, Value::Bytes(k)) => key = string(k)?,
                        (2, Value::Bytes(v)) => val = string(v)?,
                        _ => {}
                    }
                }
                m.attributes.insert(key, val);
            }
            (5, Value::Bytes(b)) => m.ordering_key = string(b)?,
            (1 | 2 | 5, _) => return Err(DecodeError("wrong wire type in PubsubMessage")),
            _ => {}
        }
    }
    Ok(m)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Encodes a `PublishResponse`.
pub(crate) fn encode_publish_response(message_ids: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for id in message_ids {
        put_bytes(&mut out, 1, id.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What protobufjs (as @google-cloud/pubsub uses it) writes for
    /// `{topic: "projects/p/topics/t", messages: [{data: "hi", attributes:
    /// {k: "v"}, orderingKey: "o"}, {data: ""}]}`.
    const FROM_PROTOBUFJS: &[u8] = &[
        0x0a, 0x13, b'p', b'r', b'o', b'j', b'e', b'c', b't', b's', b'/', b'p', b'/', b't', b'o',
        b'p', b'i', b'c', b's', b'/', b't', 0x12, 0x0f, 0x0a, 0x02, b'h', b'i', 0x12, 0x06, 0x0a,
        0x01, b'k', 0x12, 0x01, b'v', 0x2a, 0x01, b'o', 0x12, 0x02, 0x0a, 0x00,
    ];

    #[test]
    fn decodes_a_publish_request_written_by_a_real_encoder() {
        let req = decode_publish_request(FROM_PROTOBUFJS).unwrap();
        assert_eq!(req.topic, "projects/p/topics/t");
        assert_eq!(req.messages.len(), 2);
        assert_eq!(req.messages[0].data, b"hi");
        assert_eq!(req.messages[0].attributes["k"], "v");
        assert_eq!(req.messages[0].ordering_key, "o");
        assert_eq!(req.messages[1], Message::default());
    }

    #[test]
    fn skips_unknown_fields_and_refuses_truncation() {
        // field 9 varint 300, field 10 fixed64, field 11 fixed32, then the topic.
        let mut buf = vec![
            0x48, 0xac, 0x02, 0x51, 1, 2, 3, 4, 5, 6, 7, 8, 0x5d, 1, 2, 3, 4,
        ];
        put_bytes(&mut buf, 1, b"projects/p/topics/t");
        assert_eq!(
            decode_publish_request(&buf).unwrap().topic,
            "projects/p/topics/t"
        );
        for cut in 18..buf.len() {
            let r = decode_publish_request(&buf[..cut]);
            assert!(r.is_err(), "cut at {cut}: {r:?}");
        }
        assert_eq!(
            decode_publish_request(&[0x0b]),
            Err(DecodeError("unsupported wire type"))
        );
    }

    #[test]
    fn encodes_message_ids() {
        let ids = ["1".to_owned(), "x".repeat(200)];
        let out = encode_publish_response(&ids);
        assert_eq!(&out[..3], &[0x0a, 0x01, b'1']);
        assert_eq!(&out[3..6], &[0x0a, 0xc8, 0x01]);
        assert_eq!(out.len(), 6 + 200);
    }
}
