//! Which instance keeps standbys of which tasks, decided alike by every instance from the
//! group's members and their assignments (librdkafka has no pluggable assignor that could
//! place standbys, as Kafka Streams' does).

use std::collections::{BTreeMap, BTreeSet};

/// A group member as the group describes it: its instance (the group consumer's `client.id`,
/// which the runtime sets to the static member id) and the partitions assigned to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) instance: String,
    pub(crate) partitions: Vec<(String, i32)>,
}

impl Member {
    /// A member from its client id and its assignment bytes (the classic consumer protocol's
    /// `ConsumerProtocolAssignment`); `None` when the bytes are not one.
    pub(crate) fn decode(client_id: &str, assignment: &[u8]) -> Option<Self> {
        Some(Self { instance: client_id.to_string(), partitions: decode_assignment(assignment)? })
    }
}

/// The partitions of a `ConsumerProtocolAssignment` (int16 version, then an array of topic
/// name and partition array; user data after it is ignored). Empty bytes: nothing assigned.
fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut reader = Reader(bytes);
    reader.take(2)?;
    let topics = reader.i32()?;
    let mut partitions = Vec::new();
    for _ in 0..topics.max(0) {
        let length = usize::try_from(reader.i16()?).ok()?;
        let topic = String::from_utf8(reader.take(length)?.to_vec()).ok()?;
        for _ in 0..reader.i32()?.max(0) {
            partitions.push((topic.clone(), reader.i32()?));
        }
    }
    Some(partitions)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The tasks (by their key: sub-topology and partition, from `task_of`) that instance `me`
/// keeps standbys of: with the members in the order of their instance ids, the owner of a task
/// at position i has its `replicas` standbys at positions i+1, i+2, … (wrapping, never the
/// owner itself, so at most one fewer than the members).
pub(crate) fn standbys_of<T: Ord + Copy>(
    me: &str,
    members: &[Member],
    replicas: usize,
    task_of: impl Fn(&str, i32) -> Option<T>,
) -> BTreeSet<T> {
    let ring: BTreeMap<&str, &Member> = members.iter().map(|m| (m.instance.as_str(), m)).collect();
    let order: Vec<&str> = ring.keys().copied().collect();
    let Some(mine) = order.iter().position(|i| *i == me) else {
        return BTreeSet::new();
    };
    let n = order.len();
    let mut kept = BTreeSet::new();
    for (position, instance) in order.iter().enumerate() {
        // How far after the owner this instance comes in the ring.
        let distance = (mine + n - position) % n;
        if distance == 0 || distance > replicas {
            continue;
        }
        kept.extend(ring[instance].partitions.iter().filter_map(|(t, p)| task_of(t, *p)));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut bytes = 0i16.to_be_bytes().to_vec();
        bytes.extend((topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            bytes.extend((topic.len() as i16).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                bytes.extend(p.to_be_bytes());
            }
        }
        bytes.extend((-1i32).to_be_bytes());
        bytes
    }

    #[test]
    fn a_member_is_read_from_its_assignment_bytes() {
        let bytes = assignment(&[("events", &[0, 1]), ("profiles", &[0, 1])]);
        let member = Member::decode("app-i-1", &bytes).unwrap();
        assert_eq!(member.instance, "app-i-1");
        assert_eq!(
            member.partitions,
            [
                ("events".into(), 0),
                ("events".into(), 1),
                ("profiles".into(), 0),
                ("profiles".into(), 1)
            ]
        );
        assert_eq!(Member::decode("x-1", &[]).unwrap().partitions, []);
        assert_eq!(Member::decode("x-1", &bytes[..7]), None, "truncated bytes are not one");
    }

    #[test]
    fn each_task_has_its_replicas_on_the_next_instances_never_its_owner() {
        let member = |i: &str, ps: &[i32]| Member {
            instance: i.into(),
            partitions: ps.iter().map(|p| ("t".to_string(), *p)).collect(),
        };
        let members = [member("c", &[2]), member("a", &[0]), member("b", &[1])];
        let task = |_: &str, p: i32| Some(p);
        let of = |me: &str, n| standbys_of(me, &members, n, task);
        assert_eq!(of("a", 1), [2].into(), "a comes after c");
        assert_eq!(of("b", 1), [0].into());
        assert_eq!(of("c", 1), [1].into());
        assert_eq!(of("a", 2), [1, 2].into());
        assert_eq!(of("a", 5), [1, 2].into(), "never more than the other members' tasks");
        assert_eq!(of("a", 0), BTreeSet::new());
        assert_eq!(of("z", 1), BTreeSet::new(), "not a member (yet)");
    }
}
