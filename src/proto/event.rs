//! `mvccpb.Event`, written by hand so that an event is encoded once.
//!
//! etcd's watch server marshals a `WatchResponse` per watcher, and with it
//! every event again. Here the hub encodes an event once per member (and
//! once more with `prev_kv` when a watcher asks for it); every watcher's
//! response then carries the same shared bytes, and encoding a response
//! copies them. `build.rs` maps `.mvccpb.Event` to this type, so
//! `WatchResponse.events` holds it, and the wire format is etcd's:
//!
//! ```proto
//! message Event {
//!   enum EventType { PUT = 0; DELETE = 1; }
//!   EventType type = 1;
//!   KeyValue kv = 2;
//!   KeyValue prev_kv = 3;
//! }
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::DecodeError;

use super::mvccpb::KeyValue;

pub mod event {
    /// `mvccpb.Event.EventType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum EventType {
        Put = 0,
        Delete = 1,
    }
}

use event::EventType;

const TAG_TYPE: u32 = 1;
const TAG_KV: u32 = 2;
const TAG_PREV_KV: u32 = 3;

/// One encoded `mvccpb.Event`: the message body, without its own tag and
/// length. Cloning it shares the bytes.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    body: Bytes,
}

impl Event {
    /// Encodes an event.
    pub fn new(kind: EventType, kv: &KeyValue, prev_kv: Option<&KeyValue>) -> Event {
        let mut len = encoding::message::encoded_len(TAG_KV, kv);
        if kind != EventType::Put {
            len += encoding::int32::encoded_len(TAG_TYPE, &(kind as i32));
        }
        if let Some(prev) = prev_kv {
            len += encoding::message::encoded_len(TAG_PREV_KV, prev);
        }
        let mut buf = BytesMut::with_capacity(len);
        // Fields in tag order, and proto3 leaves out the default type.
        if kind != EventType::Put {
            encoding::int32::encode(TAG_TYPE, &(kind as i32), &mut buf);
        }
        encoding::message::encode(TAG_KV, kv, &mut buf);
        if let Some(prev) = prev_kv {
            encoding::message::encode(TAG_PREV_KV, prev, &mut buf);
        }
        debug_assert_eq!(buf.len(), len);
        Event { body: buf.freeze() }
    }

    /// The decoded fields: (type, kv, prev_kv). For tests and tools; the
    /// server only ever encodes.
    pub fn fields(&self) -> Result<(i32, Option<KeyValue>, Option<KeyValue>), DecodeError> {
        let (mut kind, mut kv, mut prev) = (0, None, None);
        let mut buf = self.body.clone();
        let ctx = DecodeContext::default();
        while buf.has_remaining() {
            let (tag, wire_type) = encoding::decode_key(&mut buf)?;
            match tag {
                TAG_TYPE => encoding::int32::merge(wire_type, &mut kind, &mut buf, ctx.clone())?,
                TAG_KV | TAG_PREV_KV => {
                    let field = if tag == TAG_KV { &mut kv } else { &mut prev };
                    let field = field.get_or_insert_with(KeyValue::default);
                    encoding::message::merge(wire_type, field, &mut buf, ctx.clone())?
                }
                _ => encoding::skip_field(wire_type, tag, &mut buf, ctx.clone())?,
            }
        }
        Ok((kind, kv, prev))
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.fields() {
            Ok((kind, kv, prev_kv)) => f
                .debug_struct("Event")
                .field("type", &EventType::try_from(kind).map_err(|_| kind))
                .field("kv", &kv)
                .field("prev_kv", &prev_kv)
                .finish(),
            Err(e) => f.debug_struct("Event").field("invalid", &e).finish(),
        }
    }
}

impl prost::Message for Event {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.body);
    }

    /// Decoding keeps each field as it came (a `KeyValue` is checked, not
    /// kept decoded): the concatenation is the same message under
    /// protobuf's merge rules.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut field = BytesMut::new();
        match tag {
            TAG_TYPE => {
                let mut v = 0;
                encoding::int32::merge(wire_type, &mut v, buf, ctx)?;
                encoding::int32::encode(TAG_TYPE, &v, &mut field);
            }
            TAG_KV | TAG_PREV_KV => {
                let mut raw = Bytes::new();
                encoding::bytes::merge(wire_type, &mut raw, buf, ctx)?;
                KeyValue::decode(raw.clone())?;
                encoding::bytes::encode(tag, &raw, &mut field);
            }
            _ => return encoding::skip_field(wire_type, tag, buf, ctx),
        }
        let mut body = BytesMut::from(&self.body[..]);
        body.extend_from_slice(&field);
        self.body = body.freeze();
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.body.len()
    }

    fn clear(&mut self) {
        self.body = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The generated shape of `mvccpb.Event`, as prost would derive it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(enumeration = "EventType", tag = "1")]
        r#type: i32,
        #[prost(message, optional, tag = "2")]
        kv: Option<KeyValue>,
        #[prost(message, optional, tag = "3")]
        prev_kv: Option<KeyValue>,
    }

    /// The field numbers are the ones in `proto/kv.proto` (etcd's).
    #[test]
    fn tags_match_the_proto_file() {
        let proto = include_str!("../../proto/kv.proto");
        let start = proto.find("message Event {").expect("message Event");
        let body = &proto[start..];
        let body = &body[..body.find("\n}").expect("end of Event")];
        for field in [
            format!("EventType type = {TAG_TYPE};"),
            format!("KeyValue kv = {TAG_KV};"),
            format!("KeyValue prev_kv = {TAG_PREV_KV};"),
            "PUT = 0;".to_string(),
            "DELETE = 1;".to_string(),
        ] {
            assert!(body.contains(&field), "{field} not in kv.proto's Event");
        }
    }

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            value: Bytes::from(vec![b'v'; 40]),
            lease: 7,
        }
    }

    #[test]
    fn encodes_like_the_derived_message() {
        let cases = [
            (EventType::Put, kv("a", 3), None),
            (EventType::Put, kv("a", 4), Some(kv("a", 3))),
            (EventType::Delete, kv("b", 9), None),
            (EventType::Delete, kv("b", 9), Some(kv("b", 8))),
            (EventType::Put, KeyValue::default(), None),
        ];
        for (kind, kv, prev) in cases {
            let ours = Event::new(kind, &kv, prev.as_ref());
            let derived = Derived {
                r#type: kind as i32,
                kv: Some(kv.clone()),
                prev_kv: prev.clone(),
            };
            assert_eq!(ours.encode_to_vec(), derived.encode_to_vec());
            assert_eq!(ours.encoded_len(), derived.encoded_len());
            assert_eq!(ours.fields().unwrap(), (kind as i32, Some(kv), prev));
        }
    }

    #[test]
    fn decodes_inside_a_repeated_field() {
        // Two events as `repeated Event events = 11` carries them.
        #[derive(Clone, PartialEq, prost::Message)]
        struct Outer {
            #[prost(message, repeated, tag = "11")]
            events: Vec<Derived>,
            #[prost(int64, tag = "2")]
            watch_id: i64,
        }
        #[derive(Clone, PartialEq, prost::Message)]
        struct OuterOurs {
            #[prost(message, repeated, tag = "11")]
            events: Vec<Event>,
            #[prost(int64, tag = "2")]
            watch_id: i64,
        }
        let outer = Outer {
            events: vec![
                Derived {
                    r#type: EventType::Delete as i32,
                    kv: Some(kv("x", 5)),
                    prev_kv: Some(kv("x", 4)),
                },
                Derived {
                    r#type: 0,
                    kv: Some(kv("y", 6)),
                    prev_kv: None,
                },
            ],
            watch_id: 3,
        };
        let wire = outer.encode_to_vec();
        let ours = OuterOurs::decode(wire.as_slice()).unwrap();
        assert_eq!(ours.watch_id, 3);
        let fields: Vec<_> = ours.events.iter().map(|e| e.fields().unwrap()).collect();
        let want: Vec<_> = outer
            .events
            .iter()
            .map(|d| (d.r#type, d.kv.clone(), d.prev_kv.clone()))
            .collect();
        assert_eq!(fields, want);
        // And back to the same bytes.
        assert_eq!(ours.encode_to_vec(), wire);
    }
}
