//! Values computed at scrape time, written by a `Collector`: one counter or
//! gauge, or a family of them by one label. Names go without `_total`: the
//! OpenMetrics encoder adds it to counters.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What one scrape writes: each metric once, with its help text.
pub type Scrape<'a> = DescriptorEncoder<'a>;

/// A counter read from the state.
pub fn counter(scrape: &mut Scrape, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(scrape.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A gauge read from the state.
pub fn gauge(scrape: &mut Scrape, name: &str, help: &str, value: f64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(scrape.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Counters by the value of one label, read from the state.
pub fn counters<L: AsRef<str>>(
    scrape: &mut Scrape,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let metrics = values.into_iter().map(|(l, n)| (l, ConstCounter::new(n)));
    family(scrape, name, help, label, MetricType::Counter, metrics)
}

/// Gauges by the value of one label, read from the state.
pub fn gauges<L: AsRef<str>>(
    scrape: &mut Scrape,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (L, f64)>,
) -> std::fmt::Result {
    let metrics = values.into_iter().map(|(l, v)| (l, ConstGauge::new(v)));
    family(scrape, name, help, label, MetricType::Gauge, metrics)
}

fn family<L: AsRef<str>, M: EncodeMetric>(
    scrape: &mut Scrape,
    name: &str,
    help: &str,
    label: &str,
    kind: MetricType,
    metrics: impl Iterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut family = scrape.encode_descriptor(name, help, None, kind)?;
    for (value, metric) in metrics {
        metric.encode(family.encode_family(&[(label, value.as_ref())])?)?;
    }
    Ok(())
}
