//! Declaring a topology: sub-topologies of sources, stores, sinks and a processor, plus global
//! tables. A sub-topology may read an internal topic that another one writes (repartition).

use std::{collections::HashSet, fmt, sync::Arc};

use super::{Processor, RuntimeError};

/// Identifies a task: one partition number of one sub-topology's (co-partitioned) sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    /// Index of the sub-topology in declaration order.
    pub sub_topology: usize,
    /// Partition number shared by the sub-topology's sources.
    pub partition: i32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.sub_topology, self.partition)
    }
}

type ProcessorFactory = Arc<dyn Fn(TaskId) -> Box<dyn Processor> + Send + Sync>;

/// One sub-topology: what it reads, keeps and writes, and how to make its processor.
#[derive(Clone)]
pub struct SubTopology {
    pub(crate) name: String,
    pub(crate) sources: Vec<String>,
    pub(crate) stores: Vec<String>,
    pub(crate) sinks: Vec<String>,
    /// Topics of this sub-topology that the runtime creates, co-partitioned with its other
    /// sources, when they are missing: internal repartition topics (sources and sinks) and
    /// [`SubTopologyBuilder::created_sink`]s.
    pub(crate) internal: Vec<String>,
    /// Sources read in record-timestamp order across them (see
    /// [`SubTopologyBuilder::ordered_source`]).
    pub(crate) ordered: Vec<String>,
    pub(crate) factory: ProcessorFactory,
}

impl SubTopology {
    /// Name of the store holding this sub-topology's timers.
    pub(crate) fn timer_store(&self) -> String {
        format!("{}-timers", self.name)
    }

    /// Every store of the sub-topology, timers last.
    pub(crate) fn all_stores(&self) -> Vec<String> {
        let mut stores = self.stores.clone();
        stores.push(self.timer_store());
        stores
    }
}

/// A compacted topic that every instance reads in full.
#[derive(Debug, Clone)]
pub struct GlobalTableSpec {
    pub(crate) name: String,
    pub(crate) topic: String,
    /// A live instance creates the topic (compacted, one partition) when missing.
    pub(crate) created_when_missing: bool,
}

/// A complete, validated topology.
#[derive(Clone)]
pub struct StreamTopology {
    pub(crate) app_id: String,
    pub(crate) sub_topologies: Vec<SubTopology>,
    pub(crate) globals: Vec<GlobalTableSpec>,
    pub(crate) dead_letter_topic: String,
    /// Sources marked [`TopologyBuilder::internal_topic`].
    pub(crate) internal_topics: Vec<String>,
}

impl StreamTopology {
    /// Starts declaring a topology for application `app_id` (the consumer group, and the prefix
    /// of changelog topics and transactional ids).
    pub fn builder(app_id: impl Into<String>) -> TopologyBuilder {
        TopologyBuilder {
            app_id: app_id.into(),
            sub_topologies: Vec::new(),
            globals: Vec::new(),
            dead_letter_topic: "herald.dead-letter".into(),
            internal_topics: Vec::new(),
        }
    }

    /// The same topology writing dead letters to `topic`.
    pub fn with_dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = topic.into();
        self
    }

    /// The application id.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Changelog topic of `store`: `<app>-<store>-changelog`.
    pub fn changelog_topic(&self, store: &str) -> String {
        format!("{}-{store}-changelog", self.app_id)
    }

    /// Every source topic, in declaration order.
    pub fn source_topics(&self) -> Vec<&str> {
        self.sub_topologies.iter().flat_map(|s| s.sources.iter().map(String::as_str)).collect()
    }

    /// The sources only this application writes and reads, whose records a live instance
    /// deletes once its tasks committed past them: every [`SubTopologyBuilder::repartition`]
    /// topic and every [`TopologyBuilder::internal_topic`], in declaration order.
    pub fn purged_sources(&self) -> Vec<&str> {
        self.sub_topologies
            .iter()
            .flat_map(|sub| sub.sources.iter().filter(move |t| sub.internal.contains(t)))
            .chain(&self.internal_topics)
            .map(String::as_str)
            .collect()
    }

    /// The sub-topology reading `topic`.
    pub(crate) fn sub_topology_of(&self, topic: &str) -> Option<usize> {
        self.sub_topologies.iter().position(|s| s.sources.iter().any(|t| t == topic))
    }
}

/// Builds a [`StreamTopology`].
pub struct TopologyBuilder {
    app_id: String,
    sub_topologies: Vec<SubTopology>,
    globals: Vec<GlobalTableSpec>,
    dead_letter_topic: String,
    internal_topics: Vec<String>,
}

impl TopologyBuilder {
    /// Topic for rejected and undecodable input (default `herald.dead-letter`).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = topic.into();
        self
    }

    /// Marks `topic`, a source of one of the sub-topologies, as internal: only this
    /// application's sub-topologies write it and only they read it (a repartition topic the
    /// deployment creates itself, unlike [`SubTopologyBuilder::repartition`]). A live instance
    /// deletes its records once its tasks committed past them (see
    /// [`super::RuntimeConfig::purge_interval`]) and warns at start when the topic deletes
    /// records by time: they carry their input's timestamp, which may be older than its
    /// retention.
    pub fn internal_topic(mut self, topic: impl Into<String>) -> Self {
        self.internal_topics.push(topic.into());
        self
    }

    /// A global table `name` read in full from compacted `topic` by every instance.
    pub fn global_table(mut self, name: impl Into<String>, topic: impl Into<String>) -> Self {
        let (name, topic) = (name.into(), topic.into());
        self.globals.push(GlobalTableSpec { name, topic, created_when_missing: false });
        self
    }

    /// A [`Self::global_table`] whose compacted topic a live instance creates (one partition)
    /// when missing: a table a deployment may never write (e.g. saved segments).
    pub fn optional_global_table(
        mut self,
        name: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        let (name, topic) = (name.into(), topic.into());
        self.globals.push(GlobalTableSpec { name, topic, created_when_missing: true });
        self
    }

    /// Adds a sub-topology named `name` (used in store and timer names), declared by `declare`.
    pub fn sub_topology<P, F>(
        mut self,
        name: impl Into<String>,
        factory: F,
        declare: impl FnOnce(SubTopologyBuilder) -> SubTopologyBuilder,
    ) -> Self
    where
        P: Processor + 'static,
        F: Fn(TaskId) -> P + Send + Sync + 'static,
    {
        let declared = declare(SubTopologyBuilder::default());
        self.sub_topologies.push(SubTopology {
            name: name.into(),
            sources: declared.sources,
            stores: declared.stores,
            sinks: declared.sinks,
            internal: declared.internal,
            ordered: declared.ordered,
            factory: Arc::new(move |task| Box::new(factory(task))),
        });
        self
    }

    /// Validates and finishes the topology.
    pub fn build(self) -> Result<StreamTopology, RuntimeError> {
        let invalid = |reason: String| Err(RuntimeError::Topology(reason));
        if self.app_id.is_empty() {
            return invalid("app id is empty".into());
        }
        if self.sub_topologies.is_empty() {
            return invalid("no sub-topology".into());
        }
        let mut sources = HashSet::new();
        let mut stores = HashSet::new();
        let mut names = HashSet::new();
        for sub in &self.sub_topologies {
            if !names.insert(sub.name.as_str()) {
                return invalid(format!("sub-topology {} declared twice", sub.name));
            }
            if sub.sources.is_empty() {
                return invalid(format!("sub-topology {} has no source", sub.name));
            }
            for topic in &sub.sources {
                if !sources.insert(topic.as_str()) {
                    return invalid(format!("topic {topic} is a source of two sub-topologies"));
                }
            }
            for store in sub.all_stores() {
                if !stores.insert(store.clone()) {
                    return invalid(format!("store {store} declared twice"));
                }
            }
        }
        if let Some(topic) = self.internal_topics.iter().find(|t| !sources.contains(t.as_str())) {
            return invalid(format!("internal topic {topic} is no sub-topology's source"));
        }
        Ok(StreamTopology {
            app_id: self.app_id,
            sub_topologies: self.sub_topologies,
            globals: self.globals,
            dead_letter_topic: self.dead_letter_topic,
            internal_topics: self.internal_topics,
        })
    }
}

/// Declares one sub-topology's sources, stores and sinks.
#[derive(Default)]
pub struct SubTopologyBuilder {
    sources: Vec<String>,
    stores: Vec<String>,
    sinks: Vec<String>,
    internal: Vec<String>,
    ordered: Vec<String>,
}

impl SubTopologyBuilder {
    /// Reads `topic`. Every source of a sub-topology must have the same partition count.
    pub fn source(mut self, topic: impl Into<String>) -> Self {
        self.sources.push(topic.into());
        self
    }

    /// Reads `topic` like [`Self::source`], in record-timestamp order with the sub-topology's
    /// other ordered sources: a live task hands their records to the processor earliest first
    /// across them, and waits (up to 2 s) for an ordered source that is behind rather than
    /// overtake its unread records (e.g. a profile written before an event, on another topic,
    /// after downtime). Per-partition order is kept; ties go to the source declared first.
    pub fn ordered_source(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.ordered.push(topic.clone());
        self.source(topic)
    }

    /// A key-value state store named `name`, backed by a changelog topic.
    pub fn store(mut self, name: impl Into<String>) -> Self {
        self.stores.push(name.into());
        self
    }

    /// May write to `topic`.
    pub fn sink(mut self, topic: impl Into<String>) -> Self {
        self.sinks.push(topic.into());
        self
    }

    /// Reads and writes `topic`, an internal repartition topic through which the processor
    /// sends records to the task of their key (Kafka's murmur2 partitioning, as
    /// [`super::ProcessorContext::owns_key`]). A live instance creates it when missing, with
    /// the partition count of the other sources and no time retention (`retention.ms` -1: its
    /// records carry their input's timestamp), and deletes the records its tasks committed
    /// past (see [`super::RuntimeConfig::purge_interval`]).
    pub fn repartition(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.sources.push(topic.clone());
        self.sinks.push(topic.clone());
        self.internal.push(topic);
        self
    }

    /// May write to `topic`, which a live instance creates when missing like a
    /// [`Self::repartition`] topic (same partition count, but one day's retention): an output only
    /// clients read, which a deployment need not create (e.g. answers to queries).
    pub fn created_sink(mut self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.sinks.push(topic.clone());
        self.internal.push(topic);
        self
    }
}
