//! How each admin API answer reads in a terminal. Pure functions from the API's
//! JSON types to text, so the layout is tested without a coordinator.

use std::fmt::Write;

use cartable_proto::api::{
    BundleView, NameChange, NameView, NodeView, PlanPreview, Status, TokenView,
};

use super::table::{Align, Table, short};
use cartable_proto::units::{human_bytes, utc_minute};

/// Ids listed in `status` before `… and N more`: an outage can leave thousands.
const LIST_AT_MOST: usize = 10;

/// `nodes`.
pub fn nodes(list: &[NodeView]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("NODE", Left),
        ("REGION", Left),
        ("SITE", Left),
        ("STATE", Left),
        ("USED", Right),
        ("CAPACITY", Right),
        ("LOAD", Right),
        ("COPIES", Right),
        ("SEEN", Right),
        ("FAILURES", Right),
    ]);
    for n in list {
        t.row(vec![
            short(n.id),
            n.region.clone(),
            n.site.clone(),
            state_word(n),
            human_bytes(n.used),
            human_bytes(n.capacity),
            n.load.to_string(),
            format!("{}/{}", n.complete, n.replicas),
            seen(n.last_seen_secs),
            n.reported_failures.to_string(),
        ]);
    }
    t.render_or("no nodes")
}

/// `node show`.
pub fn node(n: &NodeView) -> String {
    fields(&[
        ("id", n.id.to_string()),
        ("place", format!("{} / {}", n.region, n.site)),
        ("state", state_word(n)),
        ("https", n.https_url.clone()),
        (
            "disk",
            format!(
                "{} used of {}{}",
                human_bytes(n.used),
                human_bytes(n.capacity),
                n.capacity_limit
                    .map(|l| format!(" (token allows {})", human_bytes(l)))
                    .unwrap_or_default()
            ),
        ),
        ("load", format!("{} requests in flight", n.load)),
        (
            "copies",
            format!("{} placed, {} complete", n.replicas, n.complete),
        ),
        ("last seen", seen(n.last_seen_secs)),
        (
            "failures",
            format!(
                "{} reported by {} members, {} checks failed",
                n.reported_failures, n.failure_reporters, n.failed_checks
            ),
        ),
        ("new address", proposed(n)),
    ])
}

/// The node's state, `unreliable` added when marked: `up, unreliable`.
fn state_word(n: &NodeView) -> String {
    let state = json_word(&n.state);
    if n.unreliable {
        format!("{state}, unreliable")
    } else {
        state
    }
}

fn proposed(n: &NodeView) -> String {
    n.proposed_contact.as_ref().map_or_else(
        || "-".to_owned(),
        |p| {
            format!(
                "{} (quic {}) reported, not used until approved: cartable node approve-contact {}",
                p.https_url,
                p.quic,
                short(n.id)
            )
        },
    )
}

/// `bundles`.
pub fn bundles(list: &[BundleView]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("BUNDLE", Left),
        ("FILES", Right),
        ("SIZE", Right),
        ("COPIES", Right),
        ("NAMES", Left),
        ("PROBLEM", Left),
    ]);
    for b in list {
        t.row(vec![
            short(b.id),
            b.files.to_string(),
            human_bytes(b.size),
            format!("{}/{}", b.complete, b.replicas_wanted),
            or_dash(b.names.join(", ")),
            b.unplaced.clone().unwrap_or_default(),
        ]);
    }
    t.render_or("no bundles")
}

/// `bundle show`: the bundle, then every replica.
pub fn bundle(b: &BundleView) -> String {
    let mut out = fields(&[
        ("id", b.id.to_string()),
        ("files", format!("{} ({})", b.files, human_bytes(b.size))),
        (
            "copies",
            format!("{} of {} complete", b.complete, b.replicas_wanted),
        ),
        ("names", or_dash(b.names.join(", "))),
        ("unplaced", or_dash(b.unplaced.clone().unwrap_or_default())),
    ]);
    use Align::Left;
    let mut t = Table::new(&[
        ("NODE", Left),
        ("REGION", Left),
        ("SITE", Left),
        ("STATE", Left),
        ("UP", Left),
    ]);
    for r in &b.replicas {
        let up = if r.node_up { "yes" } else { "no" };
        t.row(vec![
            short(r.node),
            r.region.clone(),
            r.site.clone(),
            json_word(&r.state),
            up.to_owned(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render_or("no replicas"));
    out
}

/// `name ls`.
pub fn names(list: &[NameView]) -> String {
    let mut t = Table::new(&[("NAME", Align::Left), ("BUNDLE", Align::Left)]);
    for n in list {
        t.row(vec![n.name.clone(), short(n.bundle)]);
    }
    t.render_or("no names")
}

/// `name history`, oldest first as the API gives it.
pub fn history(list: &[NameChange]) -> String {
    let mut t = Table::new(&[("SINCE (UTC)", Align::Left), ("BUNDLE", Align::Left)]);
    for c in list {
        t.row(vec![utc_minute(c.at), short(c.bundle)]);
    }
    t.render_or("no history")
}

/// `token ls`; `now` (Unix seconds) tells expired tokens apart.
pub fn tokens(list: &[TokenView], now: u64) -> String {
    use Align::Left;
    let mut t = Table::new(&[
        ("TOKEN", Left),
        ("REGION", Left),
        ("SITE", Left),
        ("EXPIRES (UTC)", Left),
        ("STATE", Left),
    ]);
    for tok in list {
        let state = match tok.used_by {
            Some(node) => format!("used by {}", short(node)),
            None if tok.expires <= now => "expired".to_owned(),
            None => "unused".to_owned(),
        };
        t.row(vec![
            tok.id.clone(),
            tok.region.clone(),
            tok.site.clone(),
            utc_minute(tok.expires),
            state,
        ]);
    }
    t.render_or("no tokens")
}

/// `status`: counts first, then what needs attention.
pub fn status(s: &Status) -> String {
    let mut out = fields(&[
        (
            "nodes",
            format!(
                "{} up, {} down, {} draining, {} unreliable",
                s.nodes_up,
                s.nodes_down.len(),
                s.nodes_draining.len(),
                s.nodes_unreliable.len()
            ),
        ),
        (
            "bundles",
            format!(
                "{}, {} under-replicated, {} unplaceable",
                s.bundles,
                s.under_replicated.len(),
                s.unplaceable.len()
            ),
        ),
        ("down", id_list(&s.nodes_down)),
        ("draining", id_list(&s.nodes_draining)),
        ("unreliable", id_list(&s.nodes_unreliable)),
        ("under-replicated", id_list(&s.under_replicated)),
        ("unplaceable", id_list(&s.unplaceable)),
        ("new address", id_list(&s.contact_changes)),
        ("reported", id_list(&s.reported)),
    ]);
    let mut t = Table::new(&[
        ("BUNDLE", Align::Left),
        ("NODE", Align::Left),
        ("COMPLETE", Align::Right),
    ]);
    for q in &s.repair_queue {
        t.row(vec![short(q.bundle), short(q.node), q.complete.to_string()]);
    }
    let _ = writeln!(
        out,
        "\nrepair queue: {} copies waiting",
        s.repair_queue.len()
    );
    if !s.repair_queue.is_empty() {
        out.push_str(&t.render());
    }
    out
}

/// `plan --dry-run`.
pub fn plan(p: &PlanPreview) -> String {
    let mut out = format!(
        "{} replicas: {} copies to start, {} to release, {} bundles not fully placed\n",
        p.replicas, p.added, p.removed, p.unplaced
    );
    let mut t = Table::new(&[
        ("BUNDLE", Align::Left),
        ("GAINS", Align::Left),
        ("LOSES", Align::Left),
    ]);
    for m in &p.moves {
        let nodes =
            |list: &[String]| or_dash(list.iter().map(short).collect::<Vec<_>>().join(", "));
        t.row(vec![short(m.bundle), nodes(&m.to), nodes(&m.from)]);
    }
    out.push_str(&t.render_or("nothing would move"));
    out
}

/// `key  value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// An enum the way the API spells it (`up`, `copying`), so tables and JSON agree.
fn json_word(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => word,
        other => format!("{other:?}"),
    }
}

fn seen(secs: Option<u64>) -> String {
    match secs {
        Some(s) => format!("{s}s ago"),
        None => "never".to_owned(),
    }
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

fn id_list<T: std::fmt::Display>(ids: &[T]) -> String {
    let mut text: Vec<String> = ids.iter().take(LIST_AT_MOST).map(short).collect();
    if ids.len() > LIST_AT_MOST {
        text.push(format!("… and {} more", ids.len() - LIST_AT_MOST));
    }
    or_dash(text.join(", "))
}
