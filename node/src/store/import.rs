//! Importing one file as a blob: a single streaming pass that copies the bytes to
//! a temporary file while computing the BLAKE3 hash and the outboard, so a 5 GiB
//! video never sits in memory. The temporary files are synced and renamed into
//! place only when complete; a blob already stored is not written twice.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use bao_tree::BaoTree;
use bao_tree::io::sync::outboard_post_order;
use cartable_proto::BlobHash;

use super::layout::{self, Layout};
use super::verify::{BLOCK_SIZE, GROUP_BYTES};

/// Bytes read from the source per system call.
const READ_BUFFER: usize = 1 << 20;

/// The outcome of importing one file.
#[derive(Debug, Clone, Copy)]
pub struct Imported {
    /// The blob's hash.
    pub hash: BlobHash,
    /// Its size.
    pub size: u64,
    /// Whether its bytes were new to the store (false: deduplicated).
    pub new: bool,
}

/// Imports the file at `source`, which is expected to be `size` bytes long.
/// Fails with `InvalidData` if the file changed length while being read.
pub fn import_file(layout: &Layout, source: &Path, size: u64) -> io::Result<Imported> {
    let temp_data = layout.temp_path("data");
    let temp_outboard = layout.temp_path("obao");
    let result = copy_and_hash(source, size, &temp_data, &temp_outboard)
        .and_then(|hash| place(layout, hash, size, &temp_data, &temp_outboard));
    // On success the temporary files were renamed or are leftovers of a duplicate.
    let _ = layout::remove_if_present(&temp_data);
    let _ = layout::remove_if_present(&temp_outboard);
    result
}

/// Writes the temporary data and outboard files and returns the hash.
fn copy_and_hash(
    source: &Path,
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
) -> io::Result<BlobHash> {
    let mut input = io::BufReader::with_capacity(READ_BUFFER, File::open(source)?);
    let data = File::create(temp_data)?;
    let mut tee = Tee {
        input: &mut input,
        copy: BufWriter::with_capacity(READ_BUFFER, &data),
    };
    let tree = BaoTree::new(size, BLOCK_SIZE);
    let outboard = File::create(temp_outboard)?;
    let mut outboard_writer = BufWriter::new(&outboard);
    let hash = outboard_post_order(&mut tee, tree, &mut outboard_writer).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            changed(source)
        } else {
            e
        }
    })?;
    tee.copy.flush()?;
    outboard_writer.flush()?;
    drop(tee);
    if input.read(&mut [0u8; 1])? != 0 {
        return Err(changed(source));
    }
    data.sync_all()?;
    outboard.sync_all()?;
    Ok(hash.into())
}

fn changed(source: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} changed while being imported", source.display()),
    )
}

/// Renames the temporary files into place unless the blob is already stored.
fn place(
    layout: &Layout,
    hash: BlobHash,
    size: u64,
    temp_data: &Path,
    temp_outboard: &Path,
) -> io::Result<Imported> {
    let dest = layout.blob(&hash);
    let stored_len = fs::metadata(&dest).map(|m| m.len()).ok();
    if stored_len == Some(size) {
        return Ok(Imported {
            hash,
            size,
            new: false,
        });
    }
    // The outboard goes first: a data file under its final name always has one.
    if size > GROUP_BYTES {
        fs::rename(temp_outboard, layout.outboard(&hash))?;
    }
    fs::rename(temp_data, dest)?;
    Ok(Imported {
        hash,
        size,
        new: true,
    })
}

/// A reader that writes a copy of everything read through it.
struct Tee<'a, R, W: Write> {
    input: &'a mut R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}
