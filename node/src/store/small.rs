//! Blobs of at most one chunk group fetched whole from peers, stored in
//! batches. Such a blob has no outboard and nothing to resume, so it needs no
//! partial files: each is written to a temporary name, the batch is made
//! durable with one `syncfs`, then each file is renamed under its final name.
//! Per file, that is one new inode and one rename; the syncs, once per file
//! and per checkpoint on the partial path, are one per batch. A crash before
//! the renames leaves the files in `tmp/`, emptied when the store opens; the
//! folder is synced after each batch's renames, before a replaced damaged
//! copy loses its mark, and nothing depends on the names before the bundle
//! is recorded ([`Store::add_fetched_bundle`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use cartable_net::peer::exchange::WholeBlob;

use super::{Store, StoreError, io_at, layout};

/// Temporary files written for a batch, removed unless renamed.
struct Temps(Vec<PathBuf>);

impl Drop for Temps {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

impl Store {
    /// Stores verified whole blobs under their final names (blocking). A blob
    /// already held whole is left as it is; one marked damaged is replaced
    /// and unmarked.
    pub fn store_whole(&self, blobs: &[WholeBlob]) -> Result<(), StoreError> {
        if blobs.is_empty() {
            return Ok(());
        }
        let mut temps = Temps(Vec::with_capacity(blobs.len()));
        for blob in blobs {
            let temp = self.layout.temp_path("whole");
            temps.0.push(temp.clone());
            File::create(&temp)
                .and_then(|mut f| f.write_all(blob.bytes()))
                .map_err(io_at(&temp))?;
        }
        // One sync of the filesystem holding `tmp/` and `blobs/` makes every
        // file of the batch durable before any of them gets its final name.
        let tmp = self.layout.tmp_dir();
        File::open(&tmp)
            .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
            .map_err(io_at(&tmp))?;
        // Under the lock removals and commits take, as a partial blob's commit.
        let _writing = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let mut placed = Vec::new();
        for (blob, temp) in blobs.iter().zip(&temps.0) {
            let hash = blob.hash();
            if self.has_blob_file(&hash, blob.bytes().len() as u64) {
                layout::remove_if_present(temp).map_err(io_at(temp))?;
                continue;
            }
            let dest = self.layout.blob(&hash);
            fs::rename(temp, &dest).map_err(io_at(&dest))?;
            placed.push(hash);
        }
        // A mark is cleared only once the new names are durable: a crash must
        // not bring back a bad copy without its mark.
        let blobs_dir = self.layout.blobs_dir();
        layout::sync_dir(&blobs_dir).map_err(io_at(&blobs_dir))?;
        for hash in placed {
            self.index()
                .clear_damaged(&hash)
                .map_err(|e| self.index_err(e))?;
        }
        // Every temporary name is gone: nothing left to remove.
        temps.0.clear();
        Ok(())
    }
}
