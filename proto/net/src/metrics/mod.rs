//! Metrics for the operator's monitoring, in Prometheus text (OpenMetrics),
//! shared by both daemons: the `[metrics]` table, the small plain-HTTP
//! [`server`] that answers `GET /metrics` on an address of its own (never the
//! browsers' port), helpers to [`encode`] values computed at scrape time, and
//! the counts of the HTTPS shell both daemons run ([`https`]).
//!
//! Each daemon builds its own `prometheus_client` registry: counters it bumps
//! as things happen, and collectors that read its state at each scrape, so
//! that a gauge can never drift from what it gauges.

pub mod encode;
pub mod https;
pub mod server;

use std::net::SocketAddr;

use serde::Deserialize;

pub use server::MetricsServer;

/// The `[metrics]` part of both daemons' commented configuration files.
pub const TEMPLATE: &str = include_str!("../../templates/metrics.toml");

/// The `[metrics]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    listen: Option<SocketAddr>,
}

impl FileMetrics {
    /// Where metrics are served: `flag` (`--metrics`), else the file's
    /// `listen`; `None`: no metrics. Refused when it is the browsers' HTTPS
    /// address, which must never answer metrics.
    pub fn check(
        &self,
        flag: Option<SocketAddr>,
        https: SocketAddr,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let listen = flag.or(self.listen);
        if let Some(addr) = listen {
            anyhow::ensure!(
                addr.port() == 0 || addr != https,
                "metrics.listen ({addr}) must differ from the HTTPS address: browsers never see metrics"
            );
        }
        Ok(listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, https: &str) -> anyhow::Result<Option<SocketAddr>> {
        let file: FileMetrics = toml::from_str(text)?;
        file.check(None, https.parse()?)
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() -> anyhow::Result<()> {
        assert_eq!(check("", "127.0.0.1:8443")?, None);
        let on = check("listen = \"127.0.0.1:0\"", "127.0.0.1:0")?;
        assert_eq!(
            on,
            Some("127.0.0.1:0".parse()?),
            "port 0 on both is allowed"
        );
        let file: FileMetrics = toml::from_str("listen = \"127.0.0.1:9\"")?;
        let flag = Some("127.0.0.1:10".parse()?);
        assert_eq!(file.check(flag, "127.0.0.1:1".parse()?)?, flag);
        Ok(())
    }

    #[test]
    fn the_browsers_port_never_serves_metrics() {
        let e = check("listen = \"127.0.0.1:8443\"", "127.0.0.1:8443").unwrap_err();
        assert!(e.to_string().contains("metrics.listen"), "{e}");
    }
}
