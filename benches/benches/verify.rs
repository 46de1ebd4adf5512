//! The cost of verification: a verified read of a whole 64 MiB blob
//! (`BlobFiles::read_verified`, which hashes every 16 KiB chunk group and checks
//! it against the outboard) beside plain reads of the same stored file (`pread`
//! into a reused buffer, and `read_to_end` as `std::fs::read` does), all from the
//! page cache, in one group so that criterion reports their throughputs side
//! by side.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use cartable_benches::{only_blob, write_random_file};
use cartable_node::store::Store;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BLOB_BYTES: u64 = 64 << 20;
/// The plain read uses the piece size of the verified read.
const PIECE: usize = 256 * 1024;

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lesson = dir.path().join("lesson");
    fs::create_dir(&lesson).unwrap();
    write_random_file(&lesson.join("blob.bin"), BLOB_BYTES, b"verify bench").unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let added = store.add_folder(&lesson).unwrap();
    let (hash, size) = only_blob(&store, &added).unwrap();
    // The store just wrote the blob and its outboard: both are in the page cache.
    let open = || store.open_blob(&hash, size).unwrap();

    let mut group = c.benchmark_group("read_64MiB");
    group
        .throughput(Throughput::Bytes(size))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("read_verified", |b| {
        b.iter(|| {
            let mut read = 0;
            open()
                .read_verified(0..size, |bytes| {
                    read += black_box(bytes).len() as u64;
                    true
                })
                .unwrap();
            assert_eq!(read, size);
        })
    });
    group.bench_function("pread_256KiB", |b| b.iter(|| pread_all(&open().data, size)));
    group.bench_function("read_to_end", |b| {
        b.iter(|| {
            // What `std::fs::read` does: one allocation of the file's size.
            let mut bytes = Vec::with_capacity(size as usize);
            open().data.read_to_end(&mut bytes).unwrap();
            assert_eq!(black_box(bytes).len() as u64, size);
        })
    });
    group.finish();
}

/// Reads the file in pieces into one reused buffer, as a server copying it to a
/// socket would.
fn pread_all(file: &File, size: u64) {
    let mut buf = vec![0u8; PIECE];
    let mut offset = 0;
    while offset < size {
        let n = file.read_at(&mut buf, offset).unwrap();
        assert!(n > 0, "file shorter than {size}");
        black_box(&buf[..n]);
        offset += n as u64;
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
