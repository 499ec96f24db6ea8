//! etcd's alarm store (`v3alarm.AlarmStore`): which member raised which alarm (NOSPACE,
//! CORRUPT). It changes only by applying an Alarm command from the raft log, so every
//! member holds the same list. The list is kept under [`meta::ALARMS`] in `mvcc_meta`,
//! written in the apply batch with the marker, so raft snapshots carry it and a member
//! that joins or restores learns it; a copy in RAM answers the checks every request makes.
//!
//! Encoding of the value: 12 bytes per alarm, member id(8) ++ alarm type(4), big-endian,
//! in ascending order.

use std::collections::BTreeSet;
use std::sync::{PoisonError, RwLock};

use super::{meta, Keyspace, MvccError, Snapshot, StorageFault, WriteBatch};
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmType,
};

const ENTRY_LEN: usize = 12;

/// One raised alarm: (member id, etcd's alarm type number).
type Raised = (u64, i32);

/// The alarm list in RAM, mirroring the stored one.
#[derive(Default)]
pub(super) struct AlarmList(RwLock<BTreeSet<Raised>>);

/// What applying an Alarm request changes.
pub struct AlarmChange {
    /// etcd's `AlarmResponse.alarms` for the request.
    pub alarms: Vec<AlarmMember>,
    /// The list after the request, if it changed (to be stored with the apply marker).
    next: Option<BTreeSet<Raised>>,
    /// The first alarm of its type was raised (etcd logs "alarm raised" then).
    pub raised: Option<AlarmMember>,
    /// The last alarm of its type was cleared (etcd logs "alarm disarmed" then).
    pub disarmed: Option<AlarmMember>,
}

impl AlarmList {
    /// Reads the stored list.
    pub(super) fn load(meta_ks: &Keyspace) -> Result<AlarmList, MvccError> {
        let list = AlarmList::default();
        list.reload(meta_ks)?;
        Ok(list)
    }

    /// Replaces the list in RAM by the stored one (after a snapshot is installed).
    pub(super) fn reload(&self, meta_ks: &Keyspace) -> Result<(), MvccError> {
        let stored = decode_stored(meta_ks.get(meta::ALARMS)?)?;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = stored;
        Ok(())
    }

    /// etcd's `AlarmStore.Get`: the alarms of type `alarm`, every alarm for `NONE`.
    pub(super) fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        let list = self.0.read().unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .filter(|(_, a)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether any member has raised `alarm`.
    pub(super) fn is_raised(&self, alarm: AlarmType) -> bool {
        let list = self.0.read().unwrap_or_else(PoisonError::into_inner);
        list.iter().any(|&(_, a)| a == alarm as i32)
    }

    /// etcd's `applierV3backend.Alarm`, without touching the list: activating returns the
    /// alarm (also one already raised), activating NONE nothing; deactivating returns the
    /// alarm it cleared, or nothing if it was not raised; GET lists them.
    pub(super) fn plan(&self, req: &AlarmRequest) -> AlarmChange {
        let list = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let raised = (req.member_id, req.alarm);
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let count = |set: &BTreeSet<Raised>| set.iter().filter(|(_, a)| *a == req.alarm).count();
        let mut change = AlarmChange {
            alarms: Vec::new(),
            next: None,
            raised: None,
            disarmed: None,
        };
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                drop(list);
                change.alarms = self.get(req.alarm);
            }
            Ok(AlarmAction::Activate) if req.alarm != AlarmType::None as i32 => {
                change.alarms.push(member);
                if !list.contains(&raised) {
                    let mut next = list.clone();
                    next.insert(raised);
                    if count(&list) == 0 {
                        change.raised = Some(member);
                    }
                    change.next = Some(next);
                }
            }
            Ok(AlarmAction::Deactivate) if list.contains(&raised) => {
                change.alarms.push(member);
                let mut next = list.clone();
                next.remove(&raised);
                if count(&next) == 0 {
                    change.disarmed = Some(member);
                }
                change.next = Some(next);
            }
            _ => {}
        }
        change
    }

    /// Stages the list `change` leaves in `batch`, if it changed anything.
    pub(super) fn stage(meta_ks: &Keyspace, batch: &mut WriteBatch, change: &AlarmChange) {
        if let Some(next) = &change.next {
            batch.insert(meta_ks, meta::ALARMS, encode(next));
        }
    }

    /// Makes a staged change visible, once its batch committed.
    pub(super) fn commit(&self, change: AlarmChange) -> AlarmChange {
        if let Some(next) = &change.next {
            *self.0.write().unwrap_or_else(PoisonError::into_inner) = next.clone();
        }
        change
    }
}

/// The alarms stored in `snap` (what `etcd_format` writes into etcd's `alarm` bucket).
pub(super) fn in_snapshot(
    snap: &Snapshot,
    meta_ks: &Keyspace,
) -> Result<Vec<AlarmMember>, MvccError> {
    Ok(decode_stored(snap.get(meta_ks, meta::ALARMS)?)?
        .into_iter()
        .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
        .collect())
}

fn encode(list: &BTreeSet<Raised>) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() * ENTRY_LEN);
    for (member, alarm) in list {
        out.extend_from_slice(&member.to_be_bytes());
        out.extend_from_slice(&alarm.to_be_bytes());
    }
    out
}

/// The stored list, empty when nothing was ever stored.
fn decode_stored(raw: Option<impl AsRef<[u8]>>) -> Result<BTreeSet<Raised>, MvccError> {
    raw.map_or_else(|| Ok(BTreeSet::new()), |raw| decode(raw.as_ref()))
}

fn decode(raw: &[u8]) -> Result<BTreeSet<Raised>, MvccError> {
    if !raw.len().is_multiple_of(ENTRY_LEN) {
        return Err(MvccError::Storage(StorageFault::Corrupt(format!(
            "alarm list of {} bytes is not a multiple of {ENTRY_LEN}",
            raw.len()
        ))));
    }
    Ok(raw
        .chunks_exact(ENTRY_LEN)
        .map(|entry| {
            let (member, alarm) = entry.split_at(8);
            let member = u64::from_be_bytes(member.try_into().unwrap_or_default());
            let alarm = i32::from_be_bytes(alarm.try_into().unwrap_or_default());
            (member, alarm)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    fn apply(list: &AlarmList, r: AlarmRequest) -> AlarmChange {
        let change = list.plan(&r);
        list.commit(change)
    }

    #[test]
    fn activate_and_deactivate_answer_as_etcd() {
        let list = AlarmList::default();
        let first = apply(&list, req(AlarmAction::Activate, 1, AlarmType::Nospace));
        assert_eq!(first.alarms.len(), 1);
        assert!(first.raised.is_some());
        // Raising it again answers the alarm but raises nothing new.
        let again = apply(&list, req(AlarmAction::Activate, 1, AlarmType::Nospace));
        assert_eq!(again.alarms.len(), 1);
        assert!(again.raised.is_none() && again.next.is_none());
        let other = apply(&list, req(AlarmAction::Activate, 2, AlarmType::Nospace));
        assert!(other.raised.is_none());
        assert_eq!(list.get(AlarmType::None as i32).len(), 2);
        // NONE activates nothing; deactivating an alarm not raised answers nothing.
        assert!(apply(&list, req(AlarmAction::Activate, 3, AlarmType::None))
            .alarms
            .is_empty());
        assert!(
            apply(&list, req(AlarmAction::Deactivate, 3, AlarmType::Nospace))
                .alarms
                .is_empty()
        );
        let one = apply(&list, req(AlarmAction::Deactivate, 1, AlarmType::Nospace));
        assert!(one.disarmed.is_none());
        let last = apply(&list, req(AlarmAction::Deactivate, 2, AlarmType::Nospace));
        assert_eq!(
            last.alarms,
            vec![AlarmMember {
                member_id: 2,
                alarm: AlarmType::Nospace as i32
            }]
        );
        assert!(last.disarmed.is_some());
        assert!(!list.is_raised(AlarmType::Nospace));
    }

    #[test]
    fn the_list_round_trips_its_encoding() {
        let list: BTreeSet<Raised> = [(7, 1), (u64::MAX, 2)].into_iter().collect();
        assert_eq!(decode(&encode(&list)).expect("decodes"), list);
        assert!(decode(&[0; 5]).is_err());
    }
}
