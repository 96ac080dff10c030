//! Standby replicas: warm copies of tasks that other instances own, kept by reading their
//! changelogs (`read_committed`, as a restore does, but without end), so that when a task moves
//! here its store only needs the changelog's tail.
//!
//! librdkafka has no pluggable assignor, so standbys cannot be placed at assignment as Kafka
//! Streams does. Instead every instance reads the group's members and their assignments
//! (DescribeGroups, every [`REFRESH`] and after each rebalance) and keeps standbys of the tasks
//! [`placement::standbys_of`] gives it. When a task with a standby here is assigned here, the
//! standby closes with a checkpoint of the offsets it applied, and the task opens from that
//! checkpoint like after a clean restart: the restore reads only what came after. When a task
//! is revoked here it closes with its checkpoint, which a standby may continue from.
//!
//! DescribeGroups shows the assignments of classic groups only (a KIP-848 group's need
//! ConsumerGroupDescribe, which the Rust client does not offer), so standbys need the classic
//! group protocol.

mod placement;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message, Offset, TopicPartitionList,
};

use super::{
    checkpoint::{self, Checkpoint},
    store::{Restored, StoreMemory, TaskState},
    watermarks::watermarks,
    GroupProtocol, RuntimeConfig, RuntimeError, StreamTopology, TaskId,
};

/// How often the standbys follow the group's assignments (and log how far behind they are).
const REFRESH: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(10);
/// Changelog records applied per call of [`Standbys::apply`] at most.
const MAX_APPLY: usize = 5_000;

/// Store name → changelog topic of the tasks of sub-topology `sub`.
pub(crate) fn task_changelogs(topology: &StreamTopology, sub: usize) -> HashMap<String, String> {
    topology.sub_topologies[sub]
        .all_stores()
        .into_iter()
        .map(|store| {
            let topic = topology.changelog_topic(&store);
            (store, topic)
        })
        .collect()
}

/// One warm copy: the task's stores and the next changelog offset to apply per topic.
struct Standby {
    state: TaskState,
    positions: Checkpoint,
}

/// The standbys of one instance.
pub(crate) struct Standbys {
    replicas: usize,
    /// Records behind the changelogs' ends still counted as caught up.
    acceptable_lag: u64,
    /// This instance as the group lists it (its group consumer's `client.id`).
    me: String,
    group: String,
    state_root: PathBuf,
    memory: StoreMemory,
    /// Reads the standbys' changelog partitions (assigned, no group).
    consumer: BaseConsumer,
    kept: BTreeMap<TaskId, Standby>,
    /// Changelog partition → its task and store.
    targets: HashMap<(String, i32), (TaskId, String)>,
    next_refresh: Instant,
    /// Records applied so far, and whether the last refresh found them caught up.
    applied: u64,
    caught_up: bool,
}

impl Standbys {
    /// The standbys of an instance configured with `config` (none when it keeps none); `me` is
    /// its static member id.
    pub(crate) fn new(
        config: &RuntimeConfig,
        topology: &StreamTopology,
        me: &str,
        memory: StoreMemory,
    ) -> Result<Option<Self>, RuntimeError> {
        if config.standby_replicas == 0 {
            return Ok(None);
        }
        if config.group_protocol != GroupProtocol::Classic {
            return Err(RuntimeError::Config(
                "standby replicas need the classic group protocol: a KIP-848 group's assignments \
                 are not readable with DescribeGroups"
                    .into(),
            ));
        }
        let consumer: BaseConsumer = config
            .kafka
            .client_config()
            .set("group.id", format!("{}-standby", topology.app_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "20")
            .create()
            .map_err(RuntimeError::kafka("creating the standby consumer"))?;
        Ok(Some(Self {
            replicas: config.standby_replicas,
            acceptable_lag: config.standby_acceptable_lag,
            me: me.to_string(),
            group: topology.app_id.clone(),
            state_root: config.state_dir.join(&topology.app_id),
            memory,
            consumer,
            kept: BTreeMap::new(),
            targets: HashMap::new(),
            next_refresh: Instant::now(),
            applied: 0,
            caught_up: false,
        }))
    }

    /// Follows the group's assignments soon (after a rebalance).
    pub(crate) fn refresh_soon(&mut self) {
        self.next_refresh = Instant::now();
    }

    /// Follows the group's assignments when due (keeping standbys of the tasks placed here,
    /// never of `active` ones), then applies the changelog records already fetched.
    pub(crate) fn tend(
        &mut self,
        topology: &StreamTopology,
        active: &BTreeSet<TaskId>,
    ) -> Result<(), RuntimeError> {
        if Instant::now() >= self.next_refresh {
            self.next_refresh = Instant::now() + REFRESH;
            self.refresh(topology, active)?;
        }
        self.apply()
    }

    /// Closes the standbys of `ids`, about to become active here, with a checkpoint of what
    /// they applied: their tasks restore only the rest.
    pub(crate) fn promote(&mut self, ids: &[TaskId]) -> Result<(), RuntimeError> {
        let promoted: Vec<TaskId> =
            ids.iter().filter(|id| self.kept.contains_key(id)).copied().collect();
        if promoted.is_empty() {
            return Ok(());
        }
        self.sync_positions()?;
        for id in &promoted {
            let standby = self.kept.remove(id).expect("kept standby");
            close(*id, standby);
        }
        tracing::info!(tasks = ?promoted.iter().map(ToString::to_string).collect::<Vec<_>>(), "standbys promoted: their tasks restore from the standbys' checkpoints");
        self.reassign()
    }

    /// Reads the group's members and assignments and keeps the standbys placed here.
    fn refresh(
        &mut self,
        topology: &StreamTopology,
        active: &BTreeSet<TaskId>,
    ) -> Result<(), RuntimeError> {
        let list = self
            .consumer
            .fetch_group_list(Some(&self.group), TIMEOUT)
            .map_err(RuntimeError::kafka("describing the group"))?;
        let Some(group) = list.groups().first() else { return Ok(()) };
        // Mid-rebalance the assignments are not known yet: keep what is kept.
        if group.state() != "Stable" {
            return Ok(());
        }
        let members: Option<Vec<placement::Member>> = group
            .members()
            .iter()
            .map(|m| placement::Member::decode(m.client_id(), m.assignment().unwrap_or_default()))
            .collect();
        let Some(members) = members else {
            tracing::warn!(group = %self.group, "unreadable assignments in the group; standbys unchanged");
            return Ok(());
        };
        let task_of = |topic: &str, partition: i32| {
            topology.sub_topology_of(topic).map(|sub| TaskId { sub_topology: sub, partition })
        };
        let mut wanted = placement::standbys_of(&self.me, &members, self.replicas, task_of);
        wanted.retain(|id| !active.contains(id));
        let current: BTreeSet<TaskId> = self.kept.keys().copied().collect();
        self.sync_positions()?;
        if wanted != current {
            for id in current.difference(&wanted) {
                let standby = self.kept.remove(id).expect("kept standby");
                close(*id, standby);
            }
            for id in wanted.difference(&current) {
                let standby = self.open(topology, *id)?;
                self.kept.insert(*id, standby);
            }
            tracing::info!(tasks = ?wanted.iter().map(ToString::to_string).collect::<Vec<_>>(), "standby tasks");
            self.reassign()?;
        }
        self.report_lag()
    }

    /// Opens the standby store of `id`: from its checkpoint if it has one (closed cleanly,
    /// as an active task or a standby), from scratch otherwise.
    fn open(&self, topology: &StreamTopology, id: TaskId) -> Result<Standby, RuntimeError> {
        let dir = self.state_root.join(id.to_string());
        let positions = checkpoint::take(&dir);
        if positions.is_none() && dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(RuntimeError::io(format!("wiping {}", dir.display())))?;
        }
        let changelogs = task_changelogs(topology, id.sub_topology);
        let state = TaskState::open(&dir, id.partition, changelogs, &self.memory)?;
        Ok(Standby { state, positions: positions.unwrap_or_default() })
    }

    /// Assigns the standbys' changelog partitions from their positions.
    fn reassign(&mut self) -> Result<(), RuntimeError> {
        let mut assignment = TopicPartitionList::new();
        self.targets.clear();
        for (id, standby) in &self.kept {
            for topic in standby.state.changelog_topics() {
                let offset =
                    standby.positions.get(topic).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                assignment
                    .add_partition_offset(topic, id.partition, offset)
                    .map_err(RuntimeError::kafka(format!("assigning {topic}/{}", id.partition)))?;
                let store = standby.state.store_of_changelog(topic).expect("own topic").to_string();
                self.targets.insert((topic.to_string(), id.partition), (*id, store));
            }
        }
        self.consumer
            .assign(&assignment)
            .map_err(RuntimeError::kafka("assigning the standbys' changelogs"))
    }

    /// Applies the changelog records fetched so far (at most [`MAX_APPLY`]), one write batch
    /// per changelog partition.
    fn apply(&mut self) -> Result<(), RuntimeError> {
        if self.kept.is_empty() {
            return Ok(());
        }
        let mut pending: HashMap<(String, i32), Vec<Restored>> = HashMap::new();
        for _ in 0..MAX_APPLY {
            let Some(result) = self.consumer.poll(Duration::ZERO) else { break };
            let message = match result {
                Ok(message) => message,
                Err(error) => {
                    tracing::warn!(%error, "standby consumer error");
                    break;
                }
            };
            let key = (message.topic().to_string(), message.partition());
            let record =
                (message.key().unwrap_or_default().to_vec(), message.payload().map(<[u8]>::to_vec));
            pending.entry(key).or_default().push(record);
        }
        if pending.is_empty() {
            return Ok(());
        }
        for (key, records) in pending {
            let Some((id, store)) = self.targets.get(&key) else { continue };
            let Some(standby) = self.kept.get(id) else { continue };
            standby.state.restore(store, &records)?;
            self.applied += records.len() as u64;
        }
        self.sync_positions()
    }

    /// Notes the consumer's positions (past what was applied, and past transaction markers,
    /// which are not messages) as the standbys' next offsets.
    fn sync_positions(&mut self) -> Result<(), RuntimeError> {
        let positions =
            self.consumer.position().map_err(RuntimeError::kafka("reading standby positions"))?;
        for element in positions.elements() {
            let Offset::Offset(next) = element.offset() else { continue };
            let key = (element.topic().to_string(), element.partition());
            let Some((id, _)) = self.targets.get(&key) else { continue };
            if let Some(standby) = self.kept.get_mut(id) {
                standby.positions.insert(key.0, next);
            }
        }
        Ok(())
    }

    /// Logs the standbys' records behind their changelogs' ends when they come within the
    /// acceptable lag or fall behind it.
    fn report_lag(&mut self) -> Result<(), RuntimeError> {
        let partitions: Vec<(String, i32)> = self.targets.keys().cloned().collect();
        let ends = watermarks(&self.consumer, &partitions, TIMEOUT)?;
        // The acceptable lag applies to each task, as Kafka Streams' does (the log tells the
        // total), and only to standbys read from: one with neither a checkpoint nor a fetch
        // from a changelog partition holding records is not caught up, however short it is.
        let (mut per_task, mut read_from) = (HashMap::<TaskId, i64>::new(), true);
        for ((topic, partition), (low, high)) in &ends {
            let (id, _) = &self.targets[&(topic.clone(), *partition)];
            let position = self.kept[id].positions.get(topic).copied();
            read_from &= position.is_some() || high <= low;
            *per_task.entry(*id).or_default() += (high - position.unwrap_or(*low).max(*low)).max(0);
        }
        let lag: i64 = per_task.values().sum();
        let worst = per_task.values().copied().max().unwrap_or(0);
        let caught_up = !self.kept.is_empty()
            && (lag == 0 || (read_from && worst as u64 <= self.acceptable_lag));
        if caught_up != self.caught_up {
            self.caught_up = caught_up;
            tracing::info!(
                tasks = self.kept.len(),
                lag,
                applied = self.applied,
                caught_up,
                "standbys"
            );
        }
        Ok(())
    }
}

impl Drop for Standbys {
    /// Closes every standby with its checkpoint.
    fn drop(&mut self) {
        if let Err(error) = self.sync_positions() {
            tracing::warn!(%error, "standby positions unknown; their stores will be rebuilt");
            self.kept.clear();
            return;
        }
        for (id, standby) in std::mem::take(&mut self.kept) {
            close(id, standby);
        }
    }
}

/// Flushes a standby's stores and writes its checkpoint (what it applied).
fn close(id: TaskId, standby: Standby) {
    let dir = standby.state.dir().to_path_buf();
    let result = standby.state.flush().and_then(|()| checkpoint::write(&dir, &standby.positions));
    if let Err(error) = result {
        tracing::warn!(task = %id, %error, "could not checkpoint a standby; it will be rebuilt");
    }
}
