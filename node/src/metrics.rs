//! What a node tells the operator's monitoring (names and alert rules:
//! `docs/monitoring.md`). Requests are counted as they are answered
//! ([`Http`]); the store, peers, copies and the coordinator are read at each
//! scrape ([`NodeCollector`], from the same snapshot as the status page), so
//! that no gauge can drift from what it gauges.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use cartable_net::https::Load;
use cartable_net::metrics::encode::{self, Scrape};
use cartable_net::metrics::https::HttpsCollector;
use http::{Request, Response};
use hyper::body::{Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::serve::CacheCounts;
use crate::status::Sources;

/// Labels of a request count: its route class and its status code.
type RequestLabels = [(&'static str, String); 2];
/// Labels of a latency: the route class.
type RouteLabels = [(&'static str, &'static str); 1];
type Latencies = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Requests counted as they are answered.
#[derive(Debug, Clone)]
pub struct Http {
    requests: Family<RequestLabels, Counter>,
    latency: Latencies,
    served: Counter,
}

impl Http {
    /// Counts whose response bytes also go to `served` (the status page's).
    pub fn new(served: Counter) -> Self {
        Self {
            requests: Family::default(),
            // 0.5 ms to ~16 s: a file held here to a slow fetch-through.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            served,
        }
    }

    /// A request arrives: its route class and the clock start now.
    pub fn start<B>(&self, req: &Request<B>) -> Seen {
        Seen {
            http: self.clone(),
            route: route_class(req),
            start: Instant::now(),
        }
    }
}

/// A request being answered.
#[derive(Debug)]
pub struct Seen {
    http: Http,
    route: &'static str,
    start: Instant,
}

impl Seen {
    /// The response head is ready: counts it, times it, and counts its body's
    /// bytes as they are sent.
    pub fn answered<B>(self, response: Response<B>) -> Response<Counted<B>> {
        let elapsed = self.start.elapsed().as_secs_f64();
        let http = self.http;
        http.latency
            .get_or_create(&[("route", self.route)])
            .observe(elapsed);
        let status = response.status().as_u16().to_string();
        http.requests
            .get_or_create(&[("route", self.route.to_owned()), ("status", status)])
            .inc();
        response.map(|body| Counted {
            body,
            served: http.served,
        })
    }
}

/// What a request path is, for counting: a few fixed classes, so that no
/// client can grow the number of series.
fn route_class<B>(req: &Request<B>) -> &'static str {
    let path = req.uri().path();
    if path == "/" {
        "status"
    } else if path == "/healthz" {
        "health"
    } else if path.starts_with("/b/") {
        "lesson"
    } else if path.starts_with("/n/") {
        "name"
    } else if path.starts_with("/upload/") {
        "upload"
    } else {
        "other"
    }
}

/// A response body whose data bytes are counted as they are sent.
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    served: Counter,
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.served.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The node's registry: request counts, the state read at each scrape, and
/// the HTTPS server's load.
pub fn registry(sources: Arc<Sources>, http: &Http, cache: &CacheCounts, https: Load) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "cartable_node_http_requests",
        "Browser requests answered by the handler, by route class (lesson, name, status, health, upload, other) and status code",
        http.requests.clone(),
    );
    registry.register(
        "cartable_node_http_request_duration_seconds",
        "Time from a request's arrival to its response head, by route class",
        http.latency.clone(),
    );
    for (name, help, counter) in [
        (
            "cartable_node_served_bytes",
            "Bytes of response bodies sent to browsers (rate() gives the bandwidth served)",
            &sources.served,
        ),
        (
            "cartable_node_fetch_through_cache_hits",
            "Files of bundles this node does not hold that were answered from its fetch-through cache",
            &cache.hits,
        ),
        (
            "cartable_node_fetch_through_cache_misses",
            "Files of bundles this node does not hold that had to be fetched from peers",
            &cache.misses,
        ),
    ] {
        registry.register(name, help, counter.clone());
    }
    registry.register_collector(Box::new(NodeCollector(sources)));
    registry.register_collector(Box::new(HttpsCollector(https)));
    registry
}

/// Reads the store, copies, peers and the coordinator at each scrape.
#[derive(Debug)]
pub struct NodeCollector(pub Arc<Sources>);

impl Collector for NodeCollector {
    fn encode(&self, mut scrape: Scrape) -> std::fmt::Result {
        let sources = &self.0;
        let traffic = sources.traffic();
        encode::counter(
            &mut scrape,
            "cartable_node_copied_bytes",
            "Verified bytes copied from peers: assigned copies and `cartable-node fetch` (rate() gives bytes/s)",
            traffic.copied,
        )?;
        encode::counter(
            &mut scrape,
            "cartable_node_fetch_through_bytes",
            "Verified bytes fetched through from peers for browsers",
            traffic.through,
        )?;
        encode::counters(
            &mut scrape,
            "cartable_node_verification_failures",
            "Data from a peer that failed verification, by the peer's node id",
            "peer",
            sources
                .reputation
                .failures()
                .into_iter()
                .map(|(peer, n)| (peer.to_string(), n)),
        )?;
        let memory = sources.store.memory_use();
        encode::gauge(
            &mut scrape,
            "cartable_node_memory_kept_bytes",
            "Memory taken by verified bytes of files read lately, bookkeeping included (at most https.memory_mib)",
            memory.kept_bytes as f64,
        )?;
        encode::counter(
            &mut scrape,
            "cartable_node_reads_from_memory",
            "Files and 256 KiB pieces of files served to browsers from memory, without a read or a hash",
            memory.reads_from_memory,
        )?;
        encode::counter(
            &mut scrape,
            "cartable_node_reads_from_disk",
            "Files and 256 KiB pieces of files read from disk and verified to serve browsers",
            memory.reads_from_disk,
        )?;
        // The scrape runs on a blocking thread: reading the store is allowed.
        let snapshot = match sources.snapshot_blocking() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot read the store");
                return Ok(());
            }
        };
        encode::gauge(
            &mut scrape,
            "cartable_node_store_used_bytes",
            "Bytes of the bundles held (what the node reports to its coordinator)",
            snapshot.used_bytes as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_node_bundles",
            "Bundles held",
            snapshot.bundle_count as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_node_peers",
            "Peers this node may fetch from",
            snapshot.peer_count as f64,
        )?;
        if let Some(free) = snapshot.disk_free {
            encode::gauge(
                &mut scrape,
                "cartable_node_disk_free_bytes",
                "Bytes still free on the data folder's filesystem",
                free as f64,
            )?;
        }
        let (Some(capacity), Some(seen)) = (snapshot.capacity, snapshot.coordinator) else {
            return Ok(());
        };
        encode::gauge(
            &mut scrape,
            "cartable_node_store_capacity_bytes",
            "Capacity offered to the coordinator at join",
            capacity as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_node_assignments_pending",
            "Bundles the coordinator assigned here that are not held whole yet",
            seen.pending as f64,
        )?;
        encode::gauge(
            &mut scrape,
            "cartable_node_coordinator_reachable",
            "1 when the coordinator answered the last heartbeats, else 0",
            f64::from(u8::from(seen.reachable)),
        )
    }
}
