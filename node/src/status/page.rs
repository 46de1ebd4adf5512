//! The status page at `/`: plain HTML with no script and no style, every
//! value escaped, built from a [`Snapshot`] (so its size is bounded by
//! [`LISTED`](super::LISTED) rows whatever the node holds).

use std::fmt::Write;
use std::time::Duration;

use cartable_proto::units::{human_bytes, utc_minute};

use super::{CoordinatorSeen, Snapshot, Traffic};
use crate::serve::escape;

/// The page for `id`, from `snapshot` and the counts `traffic`.
pub fn render(id: &str, snapshot: &Snapshot, traffic: Traffic) -> String {
    let mut html = String::with_capacity(4096 + 256 * snapshot.bundles.len());
    let id = escape(id);
    // Writing to a String cannot fail.
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=en>\n<meta charset=utf-8>\n\
         <title>Cartable node {}</title>\n<h1>Cartable node</h1>\n<p>Node id <code>{id}</code></p>\n",
        &id[..id.len().min(8)]
    );
    coordinator(&mut html, snapshot.coordinator.as_ref());
    disk(&mut html, snapshot);
    bandwidth(&mut html, traffic);
    bundles(&mut html, snapshot);
    peers(&mut html, snapshot);
    html.push_str("<p>Figures at most a few seconds old. Metrics for monitoring are served apart, on the address the operator chose.</p>\n");
    html
}

fn coordinator(html: &mut String, seen: Option<&CoordinatorSeen>) {
    html.push_str("<h2>Coordinator</h2>\n");
    let Some(seen) = seen else {
        html.push_str(
            "<p>Not a member of a coordinator: this node serves what it holds and its peers.</p>\n",
        );
        return;
    };
    let last = seen
        .last_answer
        .map_or("no answer since this node started".to_owned(), |age| {
            format!("last answer {} ago", duration(age))
        });
    let state = if seen.reachable {
        "reachable"
    } else {
        "NOT reachable"
    };
    let _ = write!(
        html,
        "<p id=coordinator>Coordinator {state}: {last}.</p>\n\
         <p>Assigned bundles not yet copied whole: {}.</p>\n",
        seen.pending
    );
}

fn disk(html: &mut String, s: &Snapshot) {
    let capacity = s.capacity.map_or("not a member".to_owned(), human_bytes);
    let free = s.disk_free.map_or("unknown".to_owned(), human_bytes);
    let _ = write!(
        html,
        "<h2>Disk</h2>\n<table>\n<tr><th>bundles held<td id=used>{}\n\
         <tr><th>capacity offered<td>{}\n<tr><th>free on the disk<td>{}\n</table>\n",
        human_bytes(s.used_bytes),
        escape(&capacity),
        escape(&free)
    );
}

fn bandwidth(html: &mut String, t: Traffic) {
    let _ = write!(
        html,
        "<h2>Bandwidth since start</h2>\n<table>\n<tr><th>served to browsers<td id=served>{}\n\
         <tr><th>copied from peers<td id=copied>{}\n<tr><th>fetched through for browsers<td>{}\n</table>\n",
        human_bytes(t.served),
        human_bytes(t.copied),
        human_bytes(t.through)
    );
}

fn bundles(html: &mut String, s: &Snapshot) {
    let _ = write!(
        html,
        "<h2>Bundles held: {}</h2>\n<table id=bundles>\n<tr><th>bundle<th>files<th>size<th>added (UTC)\n",
        s.bundle_count
    );
    for b in &s.bundles {
        let id = escape(&b.id.to_string());
        let _ = writeln!(
            html,
            "<tr><td><a href=\"/b/{id}/\"><code>{id}</code></a><td>{}<td>{}<td>{}",
            b.files,
            human_bytes(b.bytes),
            utc_minute(b.added_unix)
        );
    }
    html.push_str("</table>\n");
    more(html, s.bundle_count, s.bundles.len());
}

fn peers(html: &mut String, s: &Snapshot) {
    let _ = writeln!(html, "<h2>Peers: {}</h2>\n<ul id=peers>", s.peer_count);
    for peer in &s.peers {
        let _ = writeln!(html, "<li><code>{}</code>", escape(&peer.to_string()));
    }
    html.push_str("</ul>\n");
    more(html, s.peer_count, s.peers.len());
}

fn more(html: &mut String, all: usize, shown: usize) {
    if all > shown {
        let _ = writeln!(html, "<p>and {} more</p>", all - shown);
    }
}

fn duration(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BundleSummary;
    use cartable_proto::BundleId;

    fn snapshot(bundles: usize) -> Snapshot {
        let all: Vec<BundleSummary> = (0..bundles)
            .map(|i| BundleSummary {
                id: BundleId::from_hash(blake3::hash(&i.to_le_bytes()).into()),
                files: 3,
                bytes: 2048,
                added_unix: 0,
            })
            .collect();
        Snapshot {
            taken: std::time::Instant::now(),
            bundles: all.into_iter().take(super::super::LISTED).collect(),
            bundle_count: bundles,
            used_bytes: 2048 * bundles as u64,
            capacity: Some(1 << 30),
            disk_free: None,
            peers: vec![],
            peer_count: 0,
            coordinator: Some(CoordinatorSeen {
                reachable: false,
                last_answer: None,
                pending: 2,
            }),
        }
    }

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_node_with_many_bundles_gets_a_page_of_bounded_size() {
        let traffic = Traffic {
            served: 5 << 20,
            copied: 0,
            through: 0,
        };
        let small = render("ab", &snapshot(3), traffic);
        assert!(small.contains("Bundles held: 3"), "{small}");
        assert!(!small.contains("more</p>"), "{small}");
        assert!(small.contains("Coordinator NOT reachable"), "{small}");
        assert!(small.contains("5.0 MiB"), "{small}");
        let huge = render("ab", &snapshot(50_000), traffic);
        assert!(
            huge.contains("and 49900 more"),
            "{}",
            &huge[huge.len() - 300..]
        );
        assert!(huge.len() < 40_000, "{} bytes", huge.len());
        assert!(!huge.contains("<script"));
    }
}
