//! The one interface the coordinator's state is kept behind: named tables of
//! keys and values. sled is the first implementation; a memory one serves the
//! unit tests, and an etcd one can follow without touching the callers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// A table: a name and its keys and values.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Durable tables of bytes.
pub trait Kv: Send + Sync + std::fmt::Debug {
    /// Every row of `table`, sorted by key.
    fn scan(&self, table: &str) -> anyhow::Result<Rows>;
    /// Writes one row.
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()>;
    /// Deletes one row (absent is fine).
    fn delete(&self, table: &str, key: &[u8]) -> anyhow::Result<()>;
    /// Makes every write so far durable.
    fn flush(&self) -> anyhow::Result<()>;
}

/// Shared tables: what a test keeps across a simulated restart, as a disk would.
impl<K: Kv + ?Sized> Kv for std::sync::Arc<K> {
    fn scan(&self, table: &str) -> anyhow::Result<Rows> {
        (**self).scan(table)
    }
    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        (**self).put(table, key, value)
    }
    fn delete(&self, table: &str, key: &[u8]) -> anyhow::Result<()> {
        (**self).delete(table, key)
    }
    fn flush(&self) -> anyhow::Result<()> {
        (**self).flush()
    }
}

/// sled on disk.
#[derive(Debug)]
pub struct SledKv(sled::Db);

impl SledKv {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Self(sled::open(dir)?))
    }

    /// Whether a process has the database in `dir` open now. sled takes an
    /// exclusive `flock` on its `db` file for as long as it is open; probing
    /// that lock, released at once, tells a running coordinator from a
    /// stopped one without opening (or creating) anything.
    pub fn is_open_elsewhere(dir: &Path) -> std::io::Result<bool> {
        let file = match std::fs::File::open(dir.join("db")) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

impl Kv for SledKv {
    fn scan(&self, table: &str) -> anyhow::Result<Rows> {
        self.0
            .open_tree(table)?
            .iter()
            .map(|row| {
                let (k, v) = row?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.0.open_tree(table)?.insert(key, value)?;
        Ok(())
    }

    fn delete(&self, table: &str, key: &[u8]) -> anyhow::Result<()> {
        self.0.open_tree(table)?.remove(key)?;
        Ok(())
    }

    fn flush(&self) -> anyhow::Result<()> {
        self.0.flush()?;
        Ok(())
    }
}

/// One table in memory.
type MemoryTable = BTreeMap<Vec<u8>, Vec<u8>>;

/// Tables in memory, for tests and simulations.
#[derive(Debug, Default)]
pub struct MemoryKv(Mutex<BTreeMap<String, MemoryTable>>);

impl Kv for MemoryKv {
    fn scan(&self, table: &str) -> anyhow::Result<Rows> {
        let tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(tables
            .get(table)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn put(&self, table: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let mut tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tables
            .entry(table.to_owned())
            .or_default()
            .insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&self, table: &str, key: &[u8]) -> anyhow::Result<()> {
        let mut tables = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get_mut(table) {
            t.remove(key);
        }
        Ok(())
    }

    fn flush(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(kv: &dyn Kv) -> anyhow::Result<()> {
        kv.put("t", b"b", b"2")?;
        kv.put("t", b"a", b"1")?;
        kv.put("u", b"a", b"x")?;
        kv.delete("t", b"b")?;
        kv.delete("t", b"missing")?;
        kv.flush()?;
        assert_eq!(kv.scan("t")?, vec![(b"a".to_vec(), b"1".to_vec())]);
        assert_eq!(kv.scan("none")?, vec![]);
        Ok(())
    }

    #[test]
    fn both_implementations_behave_alike() -> anyhow::Result<()> {
        exercise(&MemoryKv::default())?;
        // Reopening sled in the same process can race its file lock; the
        // coordinator's restart test covers a reopen by a new process.
        let dir = tempfile::tempdir()?;
        exercise(&SledKv::open(dir.path())?)
    }

    #[test]
    fn an_open_database_is_seen_from_outside() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        assert!(!SledKv::is_open_elsewhere(dir.path())?, "nothing there yet");
        let kv = SledKv::open(dir.path())?;
        assert!(SledKv::is_open_elsewhere(dir.path())?);
        drop(kv);
        Ok(())
    }
}
