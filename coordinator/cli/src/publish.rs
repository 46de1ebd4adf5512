//! `cartable publish DIR`: read the lesson folder with the node's own rules,
//! hash every file, build the manifest, register it with the coordinator,
//! upload to the node it names, and optionally wait for the copies.
//!
//! The folder is checked and hashed before any network call, so a file name
//! that breaks the path rules fails at once and changes nothing. The manifest
//! is built by [`cartable_net::folder`], as `cartable-node add` builds it, so
//! the same folder gives the same bundle id from the CLI or from a node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cartable_net::folder::{Folder, FolderError, hash_file};
use cartable_net::progress::Progress;
use cartable_proto::units::human_bytes;
use cartable_proto::{BundleId, Manifest};

use super::client::ApiClient;
use super::upload::{Sources, upload};
use cartable_net::client::encode_component;
use cartable_proto::api::{BundleView, Published};

/// How often `--wait` asks the coordinator.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// What `publish` was asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// The lesson folder.
    pub dir: PathBuf,
    /// Copies to keep [default: the coordinator's, 3].
    #[arg(long, value_name = "N")]
    pub replicas: Option<u8>,
    /// Point this name (e.g. maths/6e/fractions) at the new bundle.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Wait until every copy is complete.
    #[arg(long)]
    pub wait: bool,
    /// Seconds `--wait` waits before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
}

/// A lesson folder read and hashed, ready to publish.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The bundle's manifest.
    pub manifest: Manifest,
    /// Where each blob's bytes are.
    pub sources: Sources,
}

/// Reads and hashes the folder `dir`, reporting bytes hashed to `progress`.
pub fn pack(dir: &Path, progress: Option<&Progress>) -> anyhow::Result<Packed> {
    // The manifest's caps, before hashing gigabytes only to be refused.
    let folder = Folder::read(dir).map_err(|e| in_folder(dir, e))?;
    let total = folder.total_bytes();
    if progress.is_some() {
        eprintln!(
            "hashing {} files ({})",
            folder.files().len(),
            human_bytes(total)
        );
    }
    let mut done = 0;
    let mut sources = Sources::new();
    let manifest = folder
        .manifest(|f| {
            let hash = hash_file(&f.source, f.size, &mut |n| {
                done += n;
                if let Some(p) = progress {
                    p.update(done, total);
                }
            })?;
            sources
                .entry(hash)
                .or_insert_with(|| (f.source.clone(), f.size));
            Ok::<_, anyhow::Error>(hash)
        })
        .map_err(|e| match e.downcast::<FolderError>() {
            Ok(e) => in_folder(dir, e),
            Err(e) => e,
        })?;
    Ok(Packed { manifest, sources })
}

/// A folder's refusal: the rule an entry breaks names the entry; the caps
/// and the manifest's own rules are the folder's.
fn in_folder(dir: &Path, e: FolderError) -> anyhow::Error {
    match e {
        FolderError::Walk(e) => e.into(),
        FolderError::Manifest(e) => anyhow::Error::new(e).context(format!("{}", dir.display())),
    }
}

/// Publishes the folder and prints the bundle id and its URLs.
pub async fn publish(api: &mut ApiClient, args: PublishArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone();
    let packed = tokio::task::spawn_blocking(move || {
        let files_progress = Progress::new();
        pack(&dir, Some(&files_progress))
    })
    .await??;
    let manifest = &packed.manifest;
    eprintln!("registering bundle {} with the coordinator", manifest.id());
    let mut query = Vec::new();
    if let Some(n) = args.replicas {
        query.push(format!("replicas={n}"));
    }
    if let Some(name) = &args.name {
        query.push(format!("name={}", encode_component(name)));
    }
    let path = if query.is_empty() {
        "/api/bundles".to_owned()
    } else {
        format!("/api/bundles?{}", query.join("&"))
    };
    let encoded = manifest.encode();
    let published: Published = api.post_bytes(&path, encoded.clone()).await?;
    anyhow::ensure!(
        published.bundle == manifest.id(),
        "the coordinator registered bundle {} for manifest {}",
        published.bundle,
        manifest.id()
    );
    let sent = upload(&published, encoded, &packed.sources).await?;
    if sent.blobs == 0 {
        eprintln!("the node already holds every blob: nothing uploaded");
    }
    cartable_net::say!("bundle {}", published.bundle)?;
    for url in &published.urls {
        cartable_net::say!("{url}")?;
    }
    if args.wait {
        wait(api, published.bundle, Duration::from_secs(args.timeout)).await?;
    }
    Ok(())
}

/// Polls the bundle until its copies are complete or `timeout` passes.
async fn wait(api: &mut ApiClient, id: BundleId, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut shown = None;
    loop {
        let view: BundleView = api.get(&format!("/api/bundles/{id}")).await?;
        let now = (view.complete, view.replicas_wanted);
        if shown != Some(now) {
            eprintln!("{} of {} copies complete", now.0, now.1);
            shown = Some(now);
        }
        if view.complete >= usize::from(view.replicas_wanted) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let why = view.unplaced.map(|u| format!(" ({u})")).unwrap_or_default();
            anyhow::bail!(
                "timed out after {}s with {} of {} copies complete{why}",
                timeout.as_secs(),
                view.complete,
                view.replicas_wanted
            );
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use cartable_proto::BlobHash;

    use super::*;

    #[test]
    fn the_cli_packs_a_folder_into_its_manifest_and_blobs() -> anyhow::Result<()> {
        // That a node adds the same folder under the same id is the node's
        // test: both build the manifest with `cartable_net::folder`.
        let lesson = tempfile::tempdir()?;
        fs::create_dir_all(lesson.path().join("media/deep"))?;
        fs::write(lesson.path().join("index.html"), "<h1>Fractions</h1>")?;
        fs::write(lesson.path().join("style.css"), "h1 { color: red }")?;
        fs::write(
            lesson.path().join("media/deep/copy.css"),
            "h1 { color: red }",
        )?;
        let big: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        fs::write(lesson.path().join("media/video.mp4"), &big)?;

        let packed = pack(lesson.path(), None)?;

        let entries = packed.manifest.entries();
        assert_eq!(entries.len(), 4);
        let video = packed.manifest.entry("media/video.mp4").unwrap();
        assert_eq!(
            (video.size, video.content_type.as_str()),
            (big.len() as u64, "video/mp4")
        );
        assert_eq!(video.hash, BlobHash::of(&big));
        // Two paths with the same bytes: one blob to upload.
        assert_eq!(packed.sources.len(), 3);
        Ok(())
    }

    #[test]
    fn a_bad_file_name_fails_before_anything_is_sent() -> anyhow::Result<()> {
        let lesson = tempfile::tempdir()?;
        fs::write(lesson.path().join("index.html"), "ok")?;
        fs::write(lesson.path().join("bad\\name.html"), "x")?;
        let err = pack(lesson.path(), None).unwrap_err();
        assert!(format!("{err:#}").contains("bad\\name.html"), "{err:#}");

        let empty = tempfile::tempdir()?;
        let err = pack(empty.path(), None).unwrap_err();
        assert!(format!("{err:#}").contains("holds no file"), "{err:#}");
        let err = pack(&empty.path().join("absent"), None).unwrap_err();
        assert!(format!("{err:#}").contains("absent"), "{err:#}");
        Ok(())
    }

    #[test]
    fn a_file_over_the_cap_fails_before_it_is_hashed() -> anyhow::Result<()> {
        let lesson = tempfile::tempdir()?;
        fs::write(lesson.path().join("index.html"), "ok")?;
        // Sparse: hashing it would read 64 GiB of zeros.
        let huge = fs::File::create(lesson.path().join("film.mp4"))?;
        huge.set_len(cartable_proto::manifest::MAX_FILE_BYTES + 1)?;
        let err = pack(lesson.path(), None).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("film.mp4 is 68719476737 bytes"), "{text}");
        assert!(text.contains("per file"), "{text}");
        Ok(())
    }
}
