//! State stores: one RocksDB instance per task, one column family per store. Every write is
//! also sent to the store's changelog topic partition, inside the current transaction.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode,
    Options, WriteBatch, WriteOptions, DB,
};
use serde::{de::DeserializeOwned, Serialize};

use super::{output::Output, RuntimeError};

/// Share of a memtable's size given to its Bloom filter (about 8 bits per key of 100 bytes).
const MEMTABLE_BLOOM_RATIO: f64 = 0.01;

/// Memory bounds shared by every store of an instance.
#[derive(Clone)]
pub(crate) struct StoreMemory {
    cache: Cache,
    write_buffer_bytes: usize,
}

impl StoreMemory {
    /// One block cache of `block_cache_bytes` for all tasks; memtables of `write_buffer_bytes`
    /// (at most two per column family).
    pub(crate) fn new(block_cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        Self { cache: Cache::new_lru_cache(block_cache_bytes), write_buffer_bytes }
    }

    fn options(&self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.cache);
        table.set_cache_index_and_filter_blocks(true);
        // Most reads look for a key that is not there (a new event id, a user without links or
        // deliveries): Bloom filters answer those without searching tables and memtables.
        table.set_bloom_filter(10.0, false);
        let mut options = Options::default();
        options.set_block_based_table_factory(&table);
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
        options.set_memtable_whole_key_filtering(true);
        options.set_write_buffer_size(self.write_buffer_bytes);
        options.set_max_write_buffer_number(2);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options
    }
}

/// The stores of one task.
pub(crate) struct TaskState {
    db: DB,
    dir: PathBuf,
    partition: i32,
    /// store name → changelog topic.
    changelogs: HashMap<String, String>,
    write_options: WriteOptions,
}

impl TaskState {
    /// Opens (creating if needed) the stores `changelogs` (store name → changelog topic) in `dir`.
    pub(crate) fn open(
        dir: &Path,
        partition: i32,
        changelogs: HashMap<String, String>,
        memory: &StoreMemory,
    ) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(dir)
            .map_err(RuntimeError::io(format!("creating {}", dir.display())))?;
        let mut options = memory.options();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let families =
            changelogs.keys().map(|name| ColumnFamilyDescriptor::new(name, memory.options()));
        let db = DB::open_cf_descriptors(&options, dir.join("rocksdb"), families)
            .map_err(RuntimeError::store(format!("opening {}", dir.display())))?;
        let mut write_options = WriteOptions::default();
        // The changelog is the durable copy; after an unclean stop the store is rebuilt from it.
        write_options.disable_wal(true);
        Ok(Self { db, dir: dir.to_path_buf(), partition, changelogs, write_options })
    }

    /// Directory of the task's files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store name of a changelog topic.
    pub(crate) fn store_of_changelog(&self, topic: &str) -> Option<&str> {
        self.changelogs.iter().find(|(_, t)| *t == topic).map(|(s, _)| s.as_str())
    }

    /// Changelog topics of the task's stores.
    pub(crate) fn changelog_topics(&self) -> impl Iterator<Item = &str> {
        self.changelogs.values().map(String::as_str)
    }

    /// A handle on store `name` whose writes go to `out`'s changelog.
    pub(crate) fn store<'a>(
        &'a self,
        name: &str,
        out: &'a mut dyn Output,
        timestamp_ms: i64,
    ) -> Result<Store<'a>, RuntimeError> {
        let (name, changelog) = self
            .changelogs
            .get_key_value(name)
            .ok_or_else(|| RuntimeError::Topology(format!("no store named {name} in this task")))?;
        Ok(Store { state: self, cf: self.cf(name)?, name, changelog, out, timestamp_ms })
    }

    /// Applies changelog records of `store` during restore, in one write batch (no changelog
    /// write).
    pub(crate) fn restore(&self, store: &str, records: &[Restored]) -> Result<(), RuntimeError> {
        let cf = self.cf(store)?;
        let mut batch = WriteBatch::default();
        for (key, value) in records {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(RuntimeError::store(format!("restoring {store}")))
    }

    /// Number of keys in `store` (exact count by iteration; used after restore and for metrics).
    pub(crate) fn count(&self, store: &str) -> Result<u64, RuntimeError> {
        let cf = self.cf(store)?;
        let mut count = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            item.map_err(RuntimeError::store(format!("counting {store}")))?;
            count += 1;
        }
        Ok(count)
    }

    /// RocksDB's estimate of the keys in `store`.
    pub(crate) fn estimated_keys(&self, store: &str) -> u64 {
        self.cf(store)
            .ok()
            .and_then(|cf| {
                self.db.property_int_value_cf(cf, "rocksdb.estimate-num-keys").ok().flatten()
            })
            .unwrap_or(0)
    }

    /// Flushes memtables to disk (clean close).
    pub(crate) fn flush(&self) -> Result<(), RuntimeError> {
        for name in self.changelogs.keys() {
            self.db
                .flush_cf(self.cf(name)?)
                .map_err(RuntimeError::store(format!("flushing {name}")))?;
        }
        Ok(())
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, RuntimeError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| RuntimeError::Topology(format!("no column family {name}")))
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A changelog record being restored: a key and its value, or `None` for a deletion.
pub(crate) type Restored = (Vec<u8>, Option<Vec<u8>>);

/// A key-value store of the current task. Keys are ordered bytewise; writes are changelogged.
pub struct Store<'a> {
    state: &'a TaskState,
    cf: &'a ColumnFamily,
    name: &'a str,
    changelog: &'a str,
    out: &'a mut dyn Output,
    timestamp_ms: i64,
}

impl Store<'_> {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.state
            .db
            .get_cf(self.cf, key)
            .map_err(RuntimeError::store(format!("reading {}", self.name)))
    }

    /// Sets `key` to `value`. The changelog write comes first: a value the changelog refuses
    /// (too large) leaves the store unchanged.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        self.out.changelog(
            self.changelog,
            self.state.partition,
            key,
            Some(value),
            self.timestamp_ms,
        )?;
        self.state
            .db
            .put_cf_opt(self.cf, key, value, &self.state.write_options)
            .map_err(RuntimeError::store(format!("writing {}", self.name)))
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), RuntimeError> {
        self.state
            .db
            .delete_cf_opt(self.cf, key, &self.state.write_options)
            .map_err(RuntimeError::store(format!("deleting from {}", self.name)))?;
        self.out.changelog(self.changelog, self.state.partition, key, None, self.timestamp_ms)
    }

    /// Up to `limit` entries with `from <= key < to` (an empty `to` means no upper bound), in
    /// key order.
    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, RuntimeError> {
        let mut entries = Vec::new();
        let iter = self.state.db.iterator_cf(self.cf, IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (key, value) =
                item.map_err(RuntimeError::store(format!("scanning {}", self.name)))?;
            if (!to.is_empty() && *key >= *to) || entries.len() >= limit {
                break;
            }
            entries.push((key.into_vec(), value.into_vec()));
        }
        Ok(entries)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, RuntimeError> {
        self.range(prefix, &prefix_end(prefix), limit)
    }

    /// The value of `key`, deserialised from JSON (values written with [`Store::put_as`]).
    pub fn get_as<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, RuntimeError> {
        self.get(key)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| RuntimeError::StateValue {
                    store: self.name.to_string(),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    /// Sets `key` to `value` serialised as JSON (self-describing, so stored values stay readable
    /// and evolve with `#[serde(default)]` fields).
    pub fn put_as<V: Serialize>(&mut self, key: &[u8], value: &V) -> Result<(), RuntimeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| RuntimeError::StateValue {
            store: self.name.to_string(),
            reason: e.to_string(),
        })?;
        self.put(key, &bytes)
    }
}

/// The smallest key greater than every key starting with `prefix` (empty: no such bound).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff, 0xff]), Vec::<u8>::new());
    }
}
