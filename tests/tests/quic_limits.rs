//! One client must never take the coordinator down over QUIC: a stranger's flood
//! of connections is capped per client network, holds little memory and is
//! closed unless it joins, while members keep getting answers and new nodes
//! still join; a removed member's open connections are closed, by the
//! coordinator at once and by the nodes at their next orders.

use std::path::Path;
use std::time::Duration;

use cartable_coordinator::control::STRANGER_DEADLINE;
use cartable_net::control::ask;
use cartable_net::identity::Identity;
use cartable_net::peer::PeerAddr;
use cartable_net::peer::admission::STRANGER_STREAMS;
use cartable_net::peer::auth::Members;
use cartable_net::peer::endpoint::{CLOSED_NOT_MEMBER, PeerEndpoint};
use cartable_net::peer::frame;
use cartable_proto::BlobHash;
use cartable_proto::control::{
    self, Contact, ControlRequest, ControlResponse, Heartbeat, JoinRequest,
};
use cartable_proto::join::JoinToken;
use cartable_proto::wire::{self, Request, Response};
use cartable_tests::cluster::{
    Coordinator, FAST_POLICY, ensure_success, member_endpoint, wait_for,
};
use cartable_tests::process_use;
use tokio::task::JoinSet;

/// The flood comes from another loopback address than the members (127.0.0.1),
/// as it would from another client network.
const FLOOD_FROM: &str = "127.0.0.2";
/// The coordinator's cap on strangers per client network in this test.
const PER_NETWORK: usize = 32;
/// Connections the flood attempts at once: twice its share.
const ATTEMPTS: usize = 2 * PER_NETWORK;
/// Each flood stream announces a frame this long (just under the coordinator's
/// 16 KiB cap for strangers, so it waits for the rest)...
const ANNOUNCED: usize = 16_000;
/// ...and sends all of it but the last byte, which never comes.
const SENT: usize = ANNOUNCED - 1;
/// What the flood may add to the coordinator's resident memory: each of its
/// connections holds at most its two streams' partial frames plus quinn's and
/// the task's state (measured: about 90 KiB each, 2.8 MiB in all); the bound
/// leaves room for the allocator's arenas on a busy machine.
const RSS_BOUND: u64 = 8 << 20;

/// A coordinator with [`PER_NETWORK`] as its per-network cap on strangers.
fn coordinator(dir: &Path) -> anyhow::Result<Coordinator> {
    Coordinator::start_in(
        dir,
        &format!("{FAST_POLICY}quic_max_strangers_per_network = {PER_NETWORK}\n"),
    )
}

/// Where the coordinator's QUIC endpoint is and its key, from a join token.
fn coordinator_addr(c: &Coordinator) -> anyhow::Result<PeerAddr> {
    let token: JoinToken = c.token("nowhere", "none")?.parse()?;
    Ok(PeerAddr {
        id: token.coordinator,
        addr: token.quic,
    })
}

/// Waits until `count` nodes are up (heard from within the last 1.5 s).
fn wait_up(c: &Coordinator, count: usize) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(10), "nodes up", || {
        let nodes = c.json(&["nodes"])?;
        let up = nodes
            .as_array()
            .map_or(0, |a| a.iter().filter(|n| n["state"] == "up").count());
        Ok((up == count).then_some(()))
    })
}

/// A stranger's connections, held open with partial frames on every stream.
struct Flood {
    held: Vec<quinn::Connection>,
    refused: usize,
    extra_streams_granted: usize,
    _streams: Vec<(quinn::SendStream, quinn::RecvStream)>,
    _endpoint: PeerEndpoint,
    _key: tempfile::TempDir,
}

fn refused(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<quinn::ConnectionError>(),
        Some(quinn::ConnectionError::ConnectionClosed(close))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// Opens [`ATTEMPTS`] connections at once from `from` with one key, then on each
/// connection as many streams as granted, each with a frame never finished.
async fn flood(from: &str, target: PeerAddr) -> anyhow::Result<Flood> {
    let key = tempfile::tempdir()?;
    let identity = Identity::load_or_create(key.path())?;
    let endpoint = PeerEndpoint::bind(format!("{from}:0").parse()?, &identity, Members::default())?;
    let mut tries = JoinSet::new();
    for _ in 0..ATTEMPTS {
        let endpoint = endpoint.clone();
        tries.spawn(async move { endpoint.connect_for(target, control::ALPN).await });
    }
    let mut flood = Flood {
        held: vec![],
        refused: 0,
        extra_streams_granted: 0,
        _streams: vec![],
        _endpoint: endpoint,
        _key: key,
    };
    while let Some(done) = tries.join_next().await {
        match done? {
            Ok(conn) => flood.held.push(conn),
            Err(e) if refused(&e) => flood.refused += 1,
            Err(e) => return Err(e.context("a flood connection failed, not refused")),
        }
    }
    for conn in flood.held.clone() {
        for _ in 0..STRANGER_STREAMS {
            let (mut send, recv) = conn.open_bi().await?;
            send.write_all(&wire::frame_prefix(ANNOUNCED)).await?;
            send.write_all(&vec![7u8; SENT]).await?;
            flood._streams.push((send, recv));
        }
        let extra = tokio::time::timeout(Duration::from_millis(200), conn.open_bi()).await;
        flood.extra_streams_granted += usize::from(extra.is_ok());
    }
    Ok(flood)
}

#[test]
fn a_strangers_quic_flood_is_capped_holds_little_memory_and_members_still_get_answers()
-> anyhow::Result<()> {
    let dirs = tempfile::tempdir()?;
    let c = coordinator(&dirs.path().join("coordinator"))?;
    let _member = c.join_node(&dirs.path().join("member"), "nord", "lille")?;
    wait_up(&c, 1)?;
    let target = coordinator_addr(&c)?;
    let before = process_use(c.pid())?.rss_kib * 1024;
    let rt = tokio::runtime::Runtime::new()?;
    let started = std::time::Instant::now();
    let flood = rt.block_on(flood(FLOOD_FROM, target))?;
    assert_eq!(
        (flood.held.len(), flood.refused),
        (PER_NETWORK, ATTEMPTS - PER_NETWORK),
        "one client network gets its share; the rest is refused"
    );
    assert_eq!(
        flood.extra_streams_granted, 0,
        "a stranger gets {STRANGER_STREAMS} streams, no more"
    );
    // The member goes on heartbeating through the flood, and a new node joins.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let during = process_use(c.pid())?.rss_kib * 1024;
    let _late = c.join_node(&dirs.path().join("late"), "sud", "nice")?;
    wait_up(&c, 2)?;
    let grown = during.saturating_sub(before);
    eprintln!(
        "coordinator VmRSS: {} KiB before, {} KiB with {} flood connections (+{} KiB)",
        before / 1024,
        during / 1024,
        flood.held.len(),
        grown / 1024
    );
    assert!(
        grown < RSS_BOUND,
        "the flood grew the coordinator by {grown} bytes"
    );
    // A stranger that does not join is closed at its deadline.
    let closed = rt.block_on(async {
        tokio::time::timeout(
            STRANGER_DEADLINE + Duration::from_secs(3),
            flood.held[0].closed(),
        )
        .await
    })?;
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(a) if a.error_code == 3u32.into()),
        "{closed:?}"
    );
    Ok(())
}

/// A member run by the test: joined with a token, heartbeating every 200 ms.
struct FakeMember {
    endpoint: PeerEndpoint,
    control: quinn::Connection,
    id: String,
    _key: tempfile::TempDir,
}

fn heartbeat(contact: &Contact) -> ControlRequest {
    ControlRequest::Heartbeat(Heartbeat {
        contact: contact.clone(),
        capacity: 1 << 30,
        used: 0,
        load: 0,
        held: vec![],
        failures: vec![],
        damaged: 0,
        names_version: 0,
    })
}

impl FakeMember {
    async fn join(token: &JoinToken) -> anyhow::Result<Self> {
        let key = tempfile::tempdir()?;
        let identity = Identity::load_or_create(key.path())?;
        let (endpoint, contact, control) = member_endpoint(&identity, token).await?;
        let join = ControlRequest::Join(JoinRequest {
            secret: token.secret_text(),
            contact: contact.clone(),
            capacity: 1 << 30,
        });
        let answer = ask(&control, &join).await?;
        anyhow::ensure!(
            matches!(answer, ControlResponse::Joined { .. }),
            "{answer:?}"
        );
        let beating = control.clone();
        tokio::spawn(async move {
            while ask(&beating, &heartbeat(&contact)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Self {
            endpoint,
            control,
            id: identity.id().to_string(),
            _key: key,
        })
    }

    /// A connection to `node` that the node serves: it takes our key once its
    /// orders list us as a member.
    async fn served_by(&self, node: PeerAddr) -> anyhow::Result<quinn::Connection> {
        let mut last = anyhow::anyhow!("no attempt");
        for _ in 0..50 {
            match self.served(node).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.context("the node never served the fake member"))
    }

    async fn served(&self, node: PeerAddr) -> anyhow::Result<quinn::Connection> {
        let conn = self.endpoint.connect(node).await?;
        served(&conn).await?;
        Ok(conn)
    }
}

/// Whether `conn` answers a presence query.
async fn served(conn: &quinn::Connection) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let unknown = BlobHash::of(b"not held");
    frame::write_frame(&mut send, &Request::Has(vec![unknown]).encode()).await?;
    send.finish()?;
    let answer = frame::read_response(&mut recv).await?;
    anyhow::ensure!(answer == Response::Has(vec![false]), "{answer:?}");
    Ok(())
}

/// Waits for `conn` to be closed as no longer a member.
async fn closed_as_removed(conn: &quinn::Connection, within: Duration) -> anyhow::Result<()> {
    let why = tokio::time::timeout(within, conn.closed()).await?;
    anyhow::ensure!(
        matches!(&why, quinn::ConnectionError::ApplicationClosed(a)
            if a.error_code == CLOSED_NOT_MEMBER.into()),
        "{why:?}"
    );
    Ok(())
}

#[test]
fn a_removed_member_loses_its_open_connections_to_the_coordinator_and_to_nodes()
-> anyhow::Result<()> {
    let dirs = tempfile::tempdir()?;
    let c = Coordinator::start_in(&dirs.path().join("coordinator"), FAST_POLICY)?;
    let node = c.join_node(&dirs.path().join("node"), "nord", "lille")?;
    let token: JoinToken = c.token("sud", "nice")?.parse()?;
    let rt = tokio::runtime::Runtime::new()?;
    let fake = rt.block_on(FakeMember::join(&token))?;
    let to_node =
        rt.block_on(fake.served_by(node.peer_addr().parse().map_err(anyhow::Error::msg)?))?;
    ensure_success(&c.cartable(&["node", "remove", &fake.id])?, "node remove")?;
    rt.block_on(async {
        closed_as_removed(&fake.control, Duration::from_secs(2)).await?;
        // The node drops the key at its next orders (every 200 ms here).
        closed_as_removed(&to_node, Duration::from_secs(3)).await
    })?;
    Ok(())
}
