//! A `WatchResponse` as the Watch service writes it: every field but `events` as a prost
//! message, then the events as the bytes the hub encoded once for all their watchers
//! ([`SharedEvent`]). `events` (field 11) is the last field, so the bytes are those of the
//! whole `WatchResponse` encoded at once, as etcd writes it.

use std::sync::Arc;

use prost::bytes::BufMut;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::{EncodeError, Message};

use crate::api::codec::Reply;
use crate::proto::etcdserverpb::WatchResponse;
use crate::watch::{Events, SharedEvent};

/// `WatchResponse.events`' field number.
const EVENTS_FIELD: u32 = 11;

#[derive(Debug, Clone)]
pub struct WatchReply {
    /// Every field but `events`, which stays empty.
    base: WatchResponse,
    events: Events,
    /// Whether the events carry their `prev_kv`.
    prev_kv: bool,
}

impl From<WatchResponse> for WatchReply {
    /// A response without events (created, canceled, progress).
    fn from(base: WatchResponse) -> WatchReply {
        debug_assert!(
            base.events.is_empty(),
            "events go through WatchReply::events"
        );
        WatchReply {
            base,
            events: Events::default(),
            prev_kv: false,
        }
    }
}

impl WatchReply {
    /// `base` with `events` (`base.events` stays empty).
    pub fn events(base: WatchResponse, events: Events, prev_kv: bool) -> WatchReply {
        WatchReply {
            base,
            events,
            prev_kv,
        }
    }

    pub fn encoded_len(&self) -> usize {
        self.base.encoded_len() + self.events_len(&self.events)
    }

    fn events_len(&self, events: &[Arc<SharedEvent>]) -> usize {
        events.iter().map(|e| self.event_len(e)).sum()
    }

    fn event_len(&self, event: &SharedEvent) -> usize {
        let len = event.encoded(self.prev_kv).len();
        key_len(EVENTS_FIELD) + encoded_len_varint(len as u64) + len
    }

    fn encode(&self, buf: &mut impl BufMut) -> Result<(), EncodeError> {
        self.base.encode(buf)?;
        for event in self.events.iter() {
            let bytes = event.encoded(self.prev_kv);
            encode_key(EVENTS_FIELD, WireType::LengthDelimited, buf);
            encode_varint(bytes.len() as u64, buf);
            buf.put_slice(bytes);
        }
        Ok(())
    }

    /// etcd's `sendFragments`: a response of at least `max` bytes with two or more events
    /// is split into parts each under `max` (or a single event), all but the last with
    /// `fragment`.
    pub fn fragments(self, max: usize) -> Vec<WatchReply> {
        if self.encoded_len() < max || self.events.len() < 2 {
            return vec![self];
        }
        let base = WatchResponse {
            fragment: true,
            ..self.base.clone()
        };
        let base_len = base.encoded_len();
        let mut parts = Vec::new();
        let mut rest = &self.events[..];
        while !rest.is_empty() {
            let mut len = base_len;
            let mut taken = 0;
            for event in rest {
                len += self.event_len(event);
                if taken > 0 && len >= max {
                    break;
                }
                taken += 1;
            }
            let (part, after) = rest.split_at(taken);
            rest = after;
            parts.push(WatchReply {
                base: WatchResponse {
                    fragment: !rest.is_empty(),
                    ..base.clone()
                },
                events: Arc::new(part.to_vec()),
                prev_kv: self.prev_kv,
            });
        }
        parts
    }
}

impl Reply for WatchReply {
    fn encode_reply(self, buf: &mut impl BufMut) -> Result<(), EncodeError> {
        self.encode(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::ResponseHeader;
    use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

    fn put(key: &str, size: usize) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; size],
                mod_revision: 9,
                ..Default::default()
            }),
            prev_kv: Some(KeyValue {
                key: key.into(),
                value: b"old".to_vec(),
                ..Default::default()
            }),
        }
    }

    fn reply(events: &[Event], prev_kv: bool) -> WatchReply {
        let base = WatchResponse {
            header: Some(ResponseHeader {
                revision: 9,
                ..Default::default()
            }),
            watch_id: 7,
            ..Default::default()
        };
        let shared = events.iter().map(|e| Arc::new(SharedEvent::new(e)));
        WatchReply::events(base, Arc::new(shared.collect()), prev_kv)
    }

    /// What the client decodes from a reply's bytes.
    fn decoded(reply: &WatchReply) -> WatchResponse {
        let mut bytes = Vec::new();
        reply.encode(&mut bytes).expect("encodes");
        assert_eq!(bytes.len(), reply.encoded_len());
        WatchResponse::decode(&bytes[..]).expect("decodes")
    }

    #[test]
    fn encodes_as_the_whole_response() {
        let events: Vec<Event> = (0..3).map(|i| put(&format!("k{i}"), 10)).collect();
        let whole = WatchResponse {
            events: events.clone(),
            ..reply(&[], false).base
        };
        let mut bytes = Vec::new();
        reply(&events, true).encode(&mut bytes).expect("encodes");
        assert_eq!(bytes, whole.encode_to_vec());
        let without_prev: Vec<Event> = events
            .into_iter()
            .map(|e| Event { prev_kv: None, ..e })
            .collect();
        let got = decoded(&reply(&without_prev, false));
        assert_eq!(got.events, without_prev);
        assert_eq!(decoded(&reply(&without_prev, true)), got);
    }

    #[test]
    fn large_responses_are_split_into_fragments() {
        let events: Vec<Event> = (0..10).map(|i| put(&format!("k{i}"), 100)).collect();
        let parts = reply(&events, false).fragments(350);
        assert!(parts.len() > 1);
        let responses: Vec<WatchResponse> = parts.iter().map(decoded).collect();
        let flags: Vec<bool> = responses.iter().map(|p| p.fragment).collect();
        assert!(flags[..flags.len() - 1].iter().all(|f| *f) && !flags[flags.len() - 1]);
        assert!(parts.iter().all(|p| p.encoded_len() < 350));
        assert!(responses.iter().all(|p| p.watch_id == 7));
        let joined: Vec<Event> = responses.into_iter().flat_map(|p| p.events).collect();
        let expected: Vec<Event> = events
            .iter()
            .map(|e| Event {
                prev_kv: None,
                ..e.clone()
            })
            .collect();
        assert_eq!(joined, expected);
        let whole = reply(&events, true).fragments(1 << 20);
        assert_eq!(whole.len(), 1);
        assert_eq!(decoded(&whole[0]).events, events);
    }

    #[test]
    fn an_event_over_the_limit_goes_alone() {
        let events = [put("small", 1), put("big", 1000), put("small2", 1)];
        let parts = reply(&events, false).fragments(500);
        let sizes: Vec<usize> = parts.iter().map(|p| decoded(p).events.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
    }
}
