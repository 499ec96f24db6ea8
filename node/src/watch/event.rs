//! An event as the hub hands it out: encoded once, when its revision is dispatched or read
//! from history, and shared by every watcher it goes to, so fan-out copies bytes instead of
//! cloning and re-encoding the event per watcher.

use prost::encoding::message;
use prost::Message;

use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// `mvccpb.Event.prev_kv`'s field number.
const PREV_KV_FIELD: u32 = 3;

/// One event, encoded as an `mvccpb.Event`.
#[derive(Debug)]
pub struct SharedEvent {
    key: Vec<u8>,
    revision: i64,
    put: bool,
    /// The event's encoding. prost writes fields in field-number order and `prev_kv` is
    /// the last field, so the event without `prev_kv` is a prefix of it.
    encoded: Vec<u8>,
    /// The length of that prefix.
    without_prev_kv: usize,
}

impl SharedEvent {
    pub fn new(event: &Event) -> SharedEvent {
        let kv = event.kv.as_ref();
        let encoded = event.encode_to_vec();
        let prev_kv_field = event
            .prev_kv
            .as_ref()
            .map_or(0, |prev| message::encoded_len(PREV_KV_FIELD, prev));
        SharedEvent {
            key: kv.map(|kv| kv.key.clone()).unwrap_or_default(),
            revision: kv.map_or(0, |kv| kv.mod_revision),
            put: event.r#type == EventType::Put as i32,
            without_prev_kv: encoded.len() - prev_kv_field,
            encoded,
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The revision that made it (the kv's `mod_revision`).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn is_put(&self) -> bool {
        self.put
    }

    /// The event's key-value, decoded again (for the few in-process readers of events).
    pub fn kv(&self) -> Option<KeyValue> {
        // The bytes are an encoded `Event`, so decoding them does not fail.
        Event::decode(self.encoded(false)).ok().and_then(|e| e.kv)
    }

    /// The `mvccpb.Event` encoding, with `prev_kv` (if the event has one) or without.
    pub fn encoded(&self, prev_kv: bool) -> &[u8] {
        if prev_kv {
            &self.encoded
        } else {
            &self.encoded[..self.without_prev_kv]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            mod_revision: rev,
            ..Default::default()
        }
    }

    #[test]
    fn encodes_with_and_without_prev_kv() {
        let event = Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv("k", "", 7)),
            prev_kv: Some(kv("k", "old", 6)),
        };
        let shared = SharedEvent::new(&event);
        assert_eq!(
            (shared.key(), shared.revision(), shared.is_put()),
            (&b"k"[..], 7, false)
        );
        assert_eq!(Event::decode(shared.encoded(true)).expect("decodes"), event);
        assert_eq!(shared.kv(), event.kv);
        let bare = Event {
            prev_kv: None,
            ..event
        };
        assert_eq!(Event::decode(shared.encoded(false)).expect("decodes"), bare);
        let put = SharedEvent::new(&Event {
            r#type: EventType::Put as i32,
            ..bare
        });
        assert!(put.is_put());
        assert_eq!(put.encoded(true), put.encoded(false));
    }
}
