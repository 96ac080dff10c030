//! State stores: one RocksDB instance per task, one column family per store. Every write is
//! also sent to the store's changelog topic partition, inside the current transaction.
//!
//! Writes reach RocksDB in write batches: each store keeps its latest writes in memory (reads
//! look there first) and applies them in one batch once they are many or large, before the
//! store is scanned, and when the task's stores are flushed. A record's reads and writes thus
//! mostly skip RocksDB's write path, and a key written many times in a row is written once.
//! Nothing durable depends on when a batch is applied: the changelog is the durable copy, a
//! clean close flushes everything before its checkpoint, and an unclean one wipes the store.
//!
//! A processor call (a record, a timer firing, a tick) is atomic with respect to a rejection:
//! between [`TaskState::begin_call`] and [`TaskState::end_call`] every write also notes what it
//! replaced (moving the replaced pending value, not copying it; a value already applied to
//! RocksDB is read back only if the store applies its writes during the call), and
//! [`TaskState::roll_back_call`] puts those back and logs the restored values to the changelog,
//! where, in the open transaction, they replace the call's writes.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Direction,
    IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{de::DeserializeOwned, Serialize};

use super::{output::Output, KeyedMap, RuntimeError};

/// Share of a memtable's size given to its Bloom filter (about 8 bits per key of 100 bytes).
const MEMTABLE_BLOOM_RATIO: f64 = 0.01;
/// Size of one partition of a table's filter or index.
const METADATA_BLOCK_BYTES: usize = 4 << 10;
/// Writes a store keeps in memory at most before applying them in one batch.
const PENDING_WRITES: usize = 2_048;
/// Bytes (keys and values) a store keeps in memory at most before applying them.
const PENDING_BYTES: usize = 512 << 10;

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
        // Filters and indexes in partitions of a few KiB, each cached like a data block. A whole
        // table's filter is one block of about 1.25 bytes per key (2.5 MB for 2,000,000 keys):
        // larger than a shard of the block cache (64 shards: 1 MiB each at the default 64 MiB),
        // so it was evicted at once and read and checksummed again on every lookup (seen at
        // 2,000,000 profiles: ingest fell from 23,000 records/s to a crawl). Only the small
        // top-level index of each table stays pinned.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(METADATA_BLOCK_BYTES);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
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

/// A store's writes not yet applied to RocksDB: the latest value of each key (`None`: deleted).
#[derive(Default)]
struct Pending {
    writes: KeyedMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    /// While a processor call runs: each write of the call, in order, with what it replaced.
    undo: Vec<(Vec<u8>, Prior)>,
}

/// What a write of the current call replaced.
enum Prior {
    /// A pending value (`None`: a pending deletion).
    Pending(Option<Vec<u8>>),
    /// Nothing pending: the key's value is RocksDB's.
    Stored,
}

impl Pending {
    fn full(&self) -> bool {
        self.writes.len() >= PENDING_WRITES || self.bytes >= PENDING_BYTES
    }
}

/// One store of a task: its changelog topic and its pending writes.
struct StoreSlot {
    changelog: String,
    pending: Mutex<Pending>,
}

impl StoreSlot {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole entries: the map is still usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stores of one task.
pub(crate) struct TaskState {
    db: DB,
    dir: PathBuf,
    partition: i32,
    /// store name → its changelog topic and pending writes.
    stores: HashMap<String, StoreSlot>,
    write_options: WriteOptions,
    /// A processor call is running: writes note what they replace (see the module docs).
    in_call: AtomicBool,
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
        let stores = changelogs
            .into_iter()
            .map(|(name, changelog)| (name, StoreSlot { changelog, pending: Mutex::default() }))
            .collect();
        Ok(Self {
            db,
            dir: dir.to_path_buf(),
            partition,
            stores,
            write_options,
            in_call: AtomicBool::new(false),
        })
    }

    /// Directory of the task's files.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Store name of a changelog topic.
    pub(crate) fn store_of_changelog(&self, topic: &str) -> Option<&str> {
        self.stores.iter().find(|(_, slot)| slot.changelog == topic).map(|(s, _)| s.as_str())
    }

    /// Changelog topics of the task's stores.
    pub(crate) fn changelog_topics(&self) -> impl Iterator<Item = &str> {
        self.stores.values().map(|slot| slot.changelog.as_str())
    }

    /// A handle on store `name` whose writes go to `out`'s changelog.
    pub(crate) fn store<'a>(
        &'a self,
        name: &str,
        out: &'a mut dyn Output,
        timestamp_ms: i64,
    ) -> Result<Store<'a>, RuntimeError> {
        let (name, slot) = self.slot(name)?;
        Ok(Store { state: self, cf: self.cf(name)?, name, slot, out, timestamp_ms })
    }

    /// Applies changelog records of `store` during restore, in one write batch (no changelog
    /// write).
    pub(crate) fn restore(&self, store: &str, records: &[Restored]) -> Result<(), RuntimeError> {
        self.apply_pending(store)?;
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
            .map_err(RuntimeError::on_store("restoring", store))
    }

    /// Number of keys in `store` (exact count by iteration; used after restore and for metrics).
    pub(crate) fn count(&self, store: &str) -> Result<u64, RuntimeError> {
        self.apply_pending(store)?;
        let cf = self.cf(store)?;
        let mut count = 0;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            item.map_err(RuntimeError::on_store("counting", store))?;
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

    /// Applies every pending write and flushes memtables to disk (clean close).
    pub(crate) fn flush(&self) -> Result<(), RuntimeError> {
        for name in self.stores.keys() {
            self.apply_pending(name)?;
            self.db.flush_cf(self.cf(name)?).map_err(RuntimeError::on_store("flushing", name))?;
        }
        Ok(())
    }

    /// Starts a processor call: from now on, until [`TaskState::end_call`] or
    /// [`TaskState::roll_back_call`], every write can be undone.
    pub(crate) fn begin_call(&self) {
        self.in_call.store(true, Ordering::Relaxed);
    }

    /// Ends a processor call, keeping its writes.
    pub(crate) fn end_call(&self) {
        self.in_call.store(false, Ordering::Relaxed);
        for slot in self.stores.values() {
            let mut pending = slot.pending();
            if !pending.undo.is_empty() {
                pending.undo.clear();
            }
        }
    }

    /// Ends a processor call, undoing its writes: every store reads as before the call, and
    /// each key the call wrote gets its value of before the call written to `out`'s changelog
    /// (in a transaction, that record replaces the call's own for the key), stamped
    /// `timestamp_ms`.
    pub(crate) fn roll_back_call(
        &self,
        out: &mut dyn Output,
        timestamp_ms: i64,
    ) -> Result<(), RuntimeError> {
        self.in_call.store(false, Ordering::Relaxed);
        for (name, slot) in &self.stores {
            let mut pending = slot.pending();
            if pending.undo.is_empty() {
                continue;
            }
            let undo = std::mem::take(&mut pending.undo);
            let mut keys = Vec::with_capacity(undo.len());
            for (key, prior) in undo.into_iter().rev() {
                match prior {
                    Prior::Pending(value) => {
                        pending.writes.insert(key.clone(), value);
                    }
                    Prior::Stored => {
                        pending.writes.remove(&key);
                    }
                }
                keys.push(key);
            }
            keys.sort_unstable();
            keys.dedup();
            let cf = self.cf(name)?;
            for key in keys {
                let value = match pending.writes.get(&key) {
                    Some(value) => value.clone(),
                    None => {
                        self.db.get_cf(cf, &key).map_err(RuntimeError::on_store("reading", name))?
                    }
                };
                out.changelog(
                    &slot.changelog,
                    self.partition,
                    &key,
                    value.as_deref(),
                    timestamp_ms,
                )?;
            }
        }
        Ok(())
    }

    fn slot(&self, name: &str) -> Result<(&str, &StoreSlot), RuntimeError> {
        self.stores
            .get_key_value(name)
            .map(|(name, slot)| (name.as_str(), slot))
            .ok_or_else(|| RuntimeError::Topology(format!("no store named {name} in this task")))
    }

    /// Applies `store`'s pending writes to RocksDB.
    fn apply_pending(&self, store: &str) -> Result<(), RuntimeError> {
        let (name, slot) = self.slot(store)?;
        self.write_pending(name, self.cf(name)?, &mut slot.pending())
    }

    /// Applies `pending` (store `name`'s, column family `cf`) in one write batch.
    fn write_pending(
        &self,
        name: &str,
        cf: &ColumnFamily,
        pending: &mut Pending,
    ) -> Result<(), RuntimeError> {
        if pending.writes.is_empty() {
            return Ok(());
        }
        // The writes of a running call go to RocksDB: what they replaced there is read first,
        // to be put back if the call is rolled back.
        for (key, prior) in &mut pending.undo {
            if let Prior::Stored = prior {
                let value = self
                    .db
                    .get_cf(cf, key.as_slice())
                    .map_err(RuntimeError::on_store("reading", name))?;
                *prior = Prior::Pending(value);
            }
        }
        let mut batch = WriteBatch::default();
        for (key, value) in pending.writes.drain() {
            match value {
                Some(value) => batch.put_cf(cf, key, value),
                None => batch.delete_cf(cf, key),
            }
        }
        pending.bytes = 0;
        self.db
            .write_opt(batch, &self.write_options)
            .map_err(RuntimeError::on_store("writing", name))
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
    slot: &'a StoreSlot,
    out: &'a mut dyn Output,
    timestamp_ms: i64,
}

impl Store<'_> {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RuntimeError> {
        if let Some(value) = self.slot.pending().writes.get(key) {
            return Ok(value.clone());
        }
        self.state.db.get_cf(self.cf, key).map_err(RuntimeError::on_store("reading", self.name))
    }

    /// Sets `key` to `value`. The changelog write comes first: a value the changelog refuses
    /// (too large) leaves the store unchanged.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), RuntimeError> {
        self.write(key, Some(value))
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) -> Result<(), RuntimeError> {
        self.write(key, None)
    }

    /// Sets or (`None`) removes `key`: changelog first, then the pending writes.
    fn write(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RuntimeError> {
        let changelog = &self.slot.changelog;
        self.out.changelog(changelog, self.state.partition, key, value, self.timestamp_ms)?;
        let mut pending = self.slot.pending();
        pending.bytes += key.len() + value.map_or(0, <[u8]>::len);
        let replaced = pending.writes.insert(key.to_vec(), value.map(<[u8]>::to_vec));
        if self.state.in_call.load(Ordering::Relaxed) {
            let prior = replaced.map_or(Prior::Stored, Prior::Pending);
            pending.undo.push((key.to_vec(), prior));
        }
        if pending.full() {
            self.state.write_pending(self.name, self.cf, &mut pending)?;
        }
        Ok(())
    }

    /// Up to `limit` entries with `from <= key < to` (an empty `to` means no upper bound), in
    /// key order.
    pub fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<Entry>, RuntimeError> {
        self.state.write_pending(self.name, self.cf, &mut self.slot.pending())?;
        let mut entries = Vec::new();
        // The bound stops RocksDB itself at `to`: without it, the read of the entry after the
        // last one wanted stepped over every tombstone past the range first.
        let mut options = ReadOptions::default();
        if !to.is_empty() {
            options.set_iterate_upper_bound(to);
        }
        let mode = IteratorMode::From(from, Direction::Forward);
        let mut iter = self.state.db.iterator_cf_opt(self.cf, options, mode);
        while entries.len() < limit {
            let Some(item) = iter.next() else { break };
            let (key, value) = item.map_err(RuntimeError::on_store("scanning", self.name))?;
            entries.push((key.into_vec(), value.into_vec()));
        }
        Ok(entries)
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order.
    pub fn prefix(&self, prefix: &[u8], limit: usize) -> Result<Vec<Entry>, RuntimeError> {
        self.range(prefix, &prefix_end(prefix), limit)
    }

    /// Up to `limit` entries whose key starts with `prefix`, from the key `from` (within the
    /// prefix) on, in key order: a scan that resumes where an earlier one stopped does not step
    /// again over the keys it deleted.
    pub fn prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, RuntimeError> {
        self.range(from.max(prefix), &prefix_end(prefix), limit)
    }

    /// The value of `key`, deserialised from JSON (values written with [`Store::put_as`]).
    pub fn get_as<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, RuntimeError> {
        self.get(key)?.map(|bytes| self.decode_as(&bytes)).transpose()
    }

    /// A value of this store read by a scan ([`Store::range`]), deserialised as
    /// [`Store::get_as`] does.
    pub fn decode_as<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, RuntimeError> {
        serde_json::from_slice(bytes).map_err(|e| RuntimeError::StateValue {
            store: self.name.to_string(),
            reason: e.to_string(),
        })
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

/// Runs `f` on a scratch store (its own RocksDB in a temporary directory, changelog records
/// dropped): for unit tests of code written against [`Store`].
#[cfg(test)]
pub(crate) fn with_scratch_store<R>(f: impl FnOnce(&mut Store<'_>) -> R) -> R {
    struct Discard;
    impl Output for Discard {
        fn emit(&mut self, _: &str, _: &[u8], _: &[u8], _: i64) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn changelog(
            &mut self,
            _: &str,
            _: i32,
            _: &[u8],
            _: Option<&[u8]>,
            _: i64,
        ) -> Result<(), RuntimeError> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let changelogs = HashMap::from([("scratch".to_string(), "scratch-changelog".to_string())]);
    let state = TaskState::open(dir.path(), 0, changelogs, &StoreMemory::new(1 << 20, 1 << 20))
        .expect("a scratch store");
    let mut out = Discard;
    let mut store = state.store("scratch", &mut out, 0).expect("the scratch store");
    f(&mut store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps the changelog writes.
    #[derive(Default)]
    struct Changelog(Vec<(Vec<u8>, Option<Vec<u8>>)>);

    impl Output for Changelog {
        fn emit(&mut self, _: &str, _: &[u8], _: &[u8], _: i64) -> Result<(), RuntimeError> {
            Ok(())
        }

        fn changelog(
            &mut self,
            _: &str,
            _: i32,
            key: &[u8],
            value: Option<&[u8]>,
            _: i64,
        ) -> Result<(), RuntimeError> {
            self.0.push((key.to_vec(), value.map(<[u8]>::to_vec)));
            Ok(())
        }
    }

    #[test]
    fn reads_and_scans_see_every_write_whether_applied_yet_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let changelogs = HashMap::from([("s".to_string(), "s-changelog".to_string())]);
        let state = TaskState::open(dir.path(), 0, changelogs, &StoreMemory::new(1 << 20, 1 << 20))
            .unwrap();
        let mut out = Changelog::default();
        let mut store = state.store("s", &mut out, 0).unwrap();
        let key = |i: usize| format!("k{i:05}").into_bytes();
        // More writes than are kept pending: some are applied in batches, the rest pending.
        let n = PENDING_WRITES * 2 + 7;
        for i in 0..n {
            store.put(&key(i), b"old").unwrap();
            store.put(&key(i), format!("v{i}").as_bytes()).unwrap();
        }
        store.delete(&key(3)).unwrap();
        store.delete(&key(n - 1)).unwrap();
        assert_eq!(store.get(&key(0)).unwrap(), Some(b"v0".to_vec()));
        assert_eq!(store.get(&key(n - 2)).unwrap(), Some(format!("v{}", n - 2).into_bytes()));
        assert_eq!(store.get(&key(3)).unwrap(), None);
        assert_eq!(store.get(&key(n - 1)).unwrap(), None);
        let scanned = store.prefix(b"k", usize::MAX).unwrap();
        assert_eq!(scanned.len(), n - 2);
        assert_eq!(scanned[3], (key(4), b"v4".to_vec()));
        store.put(&key(3), b"back").unwrap();
        assert_eq!(state.count("s").unwrap(), (n - 1) as u64);
        assert_eq!(out.0.len(), 2 * n + 3, "every write is changelogged");
        assert_eq!(out.0.last(), Some(&(key(3), Some(b"back".to_vec()))));
        // A clean close applies what is pending: reopened, the store has every write.
        state.flush().unwrap();
        drop(state);
        let changelogs = HashMap::from([("s".to_string(), "s-changelog".to_string())]);
        let state = TaskState::open(dir.path(), 0, changelogs, &StoreMemory::new(1 << 20, 1 << 20))
            .unwrap();
        let store = state.store("s", &mut out, 0).unwrap();
        assert_eq!(store.get(&key(3)).unwrap(), Some(b"back".to_vec()));
        assert_eq!(store.get(&key(n - 1)).unwrap(), None);
        assert_eq!(store.prefix(b"k", usize::MAX).unwrap().len(), n - 1);
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff, 0xff]), Vec::<u8>::new());
    }
}
