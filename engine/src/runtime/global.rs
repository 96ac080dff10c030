//! Global tables: compacted topics every instance reads in full (e.g. campaign definitions).

use std::collections::{BTreeMap, HashMap};

/// The latest value per key of a compacted topic, as read by this instance.
#[derive(Debug, Default, Clone)]
pub struct GlobalTable {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl GlobalTable {
    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies one record of the topic; `None` (a tombstone) removes the key.
    pub(crate) fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        match value {
            Some(value) => {
                self.entries.insert(key.to_vec(), value.to_vec());
            }
            None => {
                self.entries.remove(key);
            }
        }
    }
}

/// Every global table of a topology, by name.
#[derive(Debug, Default, Clone)]
pub(crate) struct GlobalTables {
    tables: HashMap<String, GlobalTable>,
}

impl GlobalTables {
    pub(crate) fn get(&self, name: &str) -> Option<&GlobalTable> {
        self.tables.get(name)
    }

    pub(crate) fn table_mut(&mut self, name: &str) -> &mut GlobalTable {
        self.tables.entry(name.to_string()).or_default()
    }
}
