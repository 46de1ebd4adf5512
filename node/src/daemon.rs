//! `cartable-node serve`: opens the store, starts HTTPS, QUIC, the admin socket
//! and, when configured, `/metrics`; prints the line scripts wait for, and stops
//! cleanly on Ctrl-C or SIGTERM, within [`cartable_net::signal::STOP_DEADLINE`].
//!
//! What a stop persists: the replication agent keeps its membership and its
//! last orders on disk as it gets them (temporary file, sync, rename), and a
//! copy in progress records its verified groups once their bytes are synced
//! (every 64 MiB or 2 s of them), so stopping the agent mid-copy loses no
//! acknowledged state and the copy resumes, fetching again at most what was
//! not recorded yet; the store's index is flushed last, once nothing changes it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;

use crate::admin::{AdminContext, AdminServer, Info};
use crate::config::NodeConfig;
use crate::member::{Member, Membership};
use crate::peer::asks::StoreAsks;
use crate::peer::pacing::BrowsersFirst;
use crate::peer::reputation::Reputation;
use crate::peer::respond::serve_peers;
use crate::peer::through::FetchThrough;
use crate::serve::{CacheCounts, ServeContext, UploadLimits, Uploads};
use crate::status::Sources;
use crate::store::{Store, scrub_forever};
use cartable_net::https::HttpsServer;
use cartable_net::identity::Identity;
use cartable_net::metrics::MetricsServer;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::PeerEndpoint;
use cartable_proto::control::Contact;
use std::sync::atomic::AtomicU64;

/// Runs the node until a stop signal.
/// Answering peers' requests runs on `copies`, whose threads yield to the
/// browsers' (see [`crate::background`]).
pub async fn run(config: NodeConfig, copies: Handle) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let identity = Identity::load_or_create(&data_dir)?;
    let store = Arc::new(
        Store::open(&data_dir)
            .with_context(|| format!("opening store in {}", data_dir.display()))?
            .keeping_in_memory(config.https.memory),
    );
    let tls = config.tls_files();
    if config.https.tls.is_none() {
        tls.create_self_signed_if_missing()?;
    }
    let server = HttpsServer::bind(
        config.https.listen,
        tls.server_config()?,
        config.connections.clone(),
    )
    .await
    .with_context(|| format!("binding HTTPS on {}", config.https.listen))?;
    let metrics = MetricsServer::bind_configured(config.metrics).await?;
    let membership = Membership::load(&data_dir)?;
    let members = Members::new(config.quic.peers.iter().map(|p| p.id));
    // Peers' connections are accepted, driven and answered on `copies`; the
    // ones this node opens (heartbeats, its own copies, fetch-through) go out
    // of an endpoint driven here, at the browsers' priority.
    let peers = {
        let _copies = copies.enter();
        PeerEndpoint::bind_for(
            config.quic.listen,
            &identity,
            members.clone(),
            cartable_proto::wire::ALPN,
            config.quic.limits,
        )?
    }
    .dialing_from_here()?;
    let info = Info {
        https: format!("https://{}", server.local_addr()?),
        quic: peers.local_addr()?,
        id: identity.id(),
    };
    let pacing = Arc::new(BrowsersFirst::new(server.load().pressure().clone()));
    // Started here, at the daemon's priority, which its thread inherits.
    let asks = StoreAsks::start(store.clone())?;
    let peers_task = copies.spawn(serve_peers(
        peers.clone(),
        store.clone(),
        asks,
        Some(pacing),
    ));
    let reputation = Arc::new(Reputation::default());
    let through = (!config.quic.peers.is_empty() || membership.is_some()).then(|| {
        Arc::new(FetchThrough::new(
            peers.clone(),
            config.quic.peers.clone(),
            store.clone(),
            reputation.clone(),
            config.quic.cache_max_bytes,
        ))
    });
    let damaged = Arc::new(AtomicU64::new(0));
    let copied = Arc::new(AtomicU64::new(0));
    let scrub_task = tokio::spawn(scrub_forever(
        store.clone(),
        config.scrub,
        damaged.clone(),
        server.load().pressure().clone(),
    ));
    let uploads = match &membership {
        Some(m) => Some(Arc::new(Uploads::new(
            store.clone(),
            info.id,
            m.parsed_token()?.coordinator,
            UploadLimits {
                capacity: m.capacity,
                disk_margin: config.uploads_keep_free,
            },
        ))),
        None => None,
    };
    let (member, names) = match (membership, &through) {
        (Some(membership), Some(through)) => {
            let contact = Contact {
                https_url: config
                    .https
                    .public_url
                    .clone()
                    .unwrap_or_else(|| info.https.clone()),
                quic: config.quic.public_addr.unwrap_or(info.quic),
                https_cert_sha256: tls.cert_sha256()?,
            };
            let member = Member::new(
                data_dir.clone(),
                membership,
                info.id,
                contact,
                store.clone(),
                peers.clone(),
                members.clone(),
                through.clone(),
                reputation.clone(),
                config.quic.fetch_rate,
                damaged,
                server.load(),
                copied.clone(),
            )?;
            let names = member.names.clone();
            (Some(member), Some(names))
        }
        _ => (None, None),
    };
    let member_task = member.clone().map(|m| tokio::spawn(m.run()));
    let status = Arc::new(Sources::new(
        info.id,
        store.clone(),
        through.clone(),
        member,
        reputation.clone(),
        copied.clone(),
    ));
    let http = crate::metrics::Http::new(status.served.clone());
    let cache = CacheCounts::default();
    let metrics_word = MetricsServer::listening_word(metrics.as_ref())?;
    let metrics_task = metrics.map(|m| {
        m.spawn(crate::metrics::registry(
            status.clone(),
            &http,
            &cache,
            server.load(),
        ))
    });
    let admin = AdminServer::bind(&data_dir)?;
    let admin_task = tokio::spawn(admin.run(Arc::new(AdminContext {
        store: store.clone(),
        info: info.clone(),
        peers: peers.clone(),
        through: through.clone(),
        reputation,
        copied,
    })));
    // Before the listening line: a stop signal from then on is a clean stop.
    let stop = cartable_net::signal::stop_signal();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "cartable-node listening https={} quic={} id={}{metrics_word}",
        info.https, info.quic, info.id
    )?;
    stdout.flush()?;
    drop(stdout);
    tracing::info!(https = %info.https, node = %info.id, "serving");
    let index = store.clone();
    let ctx = Arc::new(ServeContext {
        store,
        through,
        uploads,
        names,
        pressure: server.load().pressure().clone(),
        progress_timeout: config.connections.deadlines.progress,
        lessons: config.lessons.clone(),
        status: Some(status),
        cache,
    });
    let handler = move |req: http::Request<_>, _peer| {
        let seen = http.start(&req);
        // Boxed, so that this wrapper does not hold the (large) answer twice.
        let answer = Box::pin(crate::serve::respond(ctx.clone(), req));
        async move { seen.answered(answer.await) }
    };
    server.serve(handler, stop).await;
    // Stop everything that changes the store, then flush it.
    if let Some(task) = member_task {
        task.abort();
    }
    scrub_task.abort();
    peers.close();
    admin_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    let _ = admin_task.await;
    let _ = tokio::time::timeout(PEERS_CLOSE, peers_task).await;
    cartable_net::signal::persist("the store's index", move || Ok(index.flush()?)).await?;
    tracing::info!("stopped");
    Ok(())
}

/// How long the peers' QUIC side gets to close at a stop.
const PEERS_CLOSE: Duration = Duration::from_secs(1);
