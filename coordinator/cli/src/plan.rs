//! `cartable plan --dry-run`: what a topology change would move. The coordinator
//! runs the same placement function it runs for real, on a copy, and changes
//! nothing; the CLI only asks and prints.

use http::Method;

use super::client::ApiClient;
use super::commands::{Output, show};
use super::{ids, views};
use cartable_proto::api::{HypotheticalNode, PlanChange};
use cartable_proto::units;

/// What `plan` previews.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Required: the plan is only previewed, never applied.
    #[arg(long)]
    dry_run: bool,
    /// A node to take out (id or prefix; repeatable).
    #[arg(long, value_name = "NODE")]
    without: Vec<String>,
    /// A node to add, as REGION/SITE/CAPACITY, e.g. east/lyon-2/200GB (repeatable).
    #[arg(long, value_name = "REGION/SITE/CAPACITY", value_parser = parse_hypothetical)]
    with: Vec<HypotheticalNode>,
    #[command(flatten)]
    out: Output,
}

impl PlanArgs {
    /// Refuses a plan that is not a dry run: applying plans is not a command.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.dry_run, "plan only previews; pass --dry-run");
        Ok(())
    }

    /// Asks the coordinator for the preview and prints it.
    pub async fn run(self, api: &mut ApiClient) -> anyhow::Result<()> {
        let mut change = PlanChange {
            without: Vec::new(),
            with: self.with,
        };
        for node in &self.without {
            change.without.push(ids::node(api, node).await?);
        }
        let preview = api.send_json(Method::POST, "/api/plan", &change).await?;
        show(self.out, &preview, views::plan)
    }
}

/// `REGION/SITE/CAPACITY`, e.g. `east/lyon-2/200GB`.
fn parse_hypothetical(text: &str) -> Result<HypotheticalNode, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let [region, site, capacity] = parts[..] else {
        return Err(format!(
            "{text:?}: expected REGION/SITE/CAPACITY, e.g. east/lyon-2/200GB"
        ));
    };
    if region.is_empty() || site.is_empty() {
        return Err(format!("{text:?}: empty region or site"));
    }
    Ok(HypotheticalNode {
        region: region.to_owned(),
        site: site.to_owned(),
        capacity: units::parse_size(capacity)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypothetical_nodes_parse_with_sizes() {
        let node = parse_hypothetical("east/lyon-2/200GB").unwrap();
        assert_eq!(
            (node.region.as_str(), node.site.as_str(), node.capacity),
            ("east", "lyon-2", 200_000_000_000)
        );
        for bad in ["east/lyon", "east/lyon/2/3", "/lyon/1GB", "east/lyon/lots"] {
            assert!(parse_hypothetical(bad).is_err(), "{bad}");
        }
    }
}
