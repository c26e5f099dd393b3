//! Loaded modules (owned by the symbolizer's one worker thread, hence `Rc`), shared by every process that maps the same file: keyed by the file's
//! identity (device and inode) and by build id, so no binary is parsed twice, and bounded by
//! the bytes the modules hold (least recently used go first).

use std::{collections::HashMap, rc::Rc};

use super::module::Module;

/// What is known of one file.
enum Entry {
    Loaded(Rc<Module>),
    /// Loading failed; not retried until evicted.
    Failed,
}

/// The module cache. Not thread-safe: owned by the symbolizer's worker.
pub struct ModuleCache {
    by_file: HashMap<String, (Entry, u64)>,
    by_build_id: HashMap<Vec<u8>, Rc<Module>>,
    max_bytes: usize,
    bytes: usize,
    clock: u64,
    pub hits: u64,
    pub misses: u64,
    pub evicted: u64,
}

/// The outcome of a lookup.
pub enum Lookup {
    Hit(Rc<Module>),
    /// Loading failed before.
    Failed,
    Miss,
}

impl ModuleCache {
    pub fn new(max_bytes: usize) -> Self {
        ModuleCache {
            by_file: HashMap::new(),
            by_build_id: HashMap::new(),
            max_bytes,
            bytes: 0,
            clock: 0,
            hits: 0,
            misses: 0,
            evicted: 0,
        }
    }

    /// Bytes held by the cached modules.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&mut self, file_key: &str) -> Lookup {
        self.clock += 1;
        match self.by_file.get_mut(file_key) {
            Some((Entry::Loaded(m), used)) => {
                *used = self.clock;
                self.hits += 1;
                Lookup::Hit(m.clone())
            }
            Some((Entry::Failed, _)) => {
                self.hits += 1;
                Lookup::Failed
            }
            None => {
                self.misses += 1;
                Lookup::Miss
            }
        }
    }

    /// A module of this build id already loaded through another path.
    pub fn by_build_id(&self, id: &[u8]) -> Option<Rc<Module>> {
        self.by_build_id.get(id).cloned()
    }

    pub fn insert_failed(&mut self, file_key: String) {
        self.by_file.insert(file_key, (Entry::Failed, self.clock));
    }

    pub fn insert(&mut self, file_key: String, module: Rc<Module>) {
        self.clock += 1;
        if let Some(id) = &module.build_id {
            if !self.by_build_id.contains_key(id) {
                self.by_build_id.insert(id.clone(), module.clone());
                self.bytes += module.bytes;
            }
        } else {
            self.bytes += module.bytes;
        }
        self.by_file
            .insert(file_key.clone(), (Entry::Loaded(module), self.clock));
        self.evict(&file_key);
    }

    /// Drops least recently used modules until the cache fits, never `keep`.
    fn evict(&mut self, keep: &str) {
        while self.bytes > self.max_bytes {
            let victim = self
                .by_file
                .iter()
                .filter(|(k, (e, _))| k.as_str() != keep && matches!(e, Entry::Loaded(_)))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some((Entry::Loaded(m), _)) = self.by_file.remove(&victim) {
                let shared = self
                    .by_file
                    .values()
                    .any(|(e, _)| matches!(e, Entry::Loaded(o) if Rc::ptr_eq(o, &m)));
                if !shared {
                    if let Some(id) = &m.build_id {
                        self.by_build_id.remove(id);
                    }
                    self.bytes = self.bytes.saturating_sub(m.bytes);
                    self.evicted += 1;
                }
            }
        }
        if self.by_file.len() > 65_536 {
            self.by_file
                .retain(|_, (e, _)| matches!(e, Entry::Loaded(_)));
        }
    }
}
