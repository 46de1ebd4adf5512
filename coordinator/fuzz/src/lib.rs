//! The checks of the coordinator's fuzz target, shared with the test that
//! replays its corpus (`coordinator/tests/fuzz_corpus.rs`).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use cartable_coordinator::config::CoordinatorConfig;

/// The coordinator's TOML: no panic; an accepted file gives exactly the
/// timings it states, every timing can be added to the clock, and the
/// policy's rules hold.
pub fn coordinator_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (Ok(config), Ok(table)) = (
        CoordinatorConfig::from_toml(&text),
        text.parse::<toml::Table>(),
    ) else {
        return;
    };
    let stated = |key: &str| table.get(key).and_then(toml::Value::as_integer);
    let ms = |d: Duration| i64::try_from(d.as_millis()).ok();
    let p = &config.policy;
    for (key, value) in [
        ("heartbeat_ms", ms(p.heartbeat)),
        ("down_after_ms", ms(p.down_after)),
        ("route_fresh_ms", ms(config.routing.fresh)),
        ("route_check_timeout_ms", ms(config.routing.probe_timeout)),
        (
            "repair_delay_secs",
            i64::try_from(p.repair_delay.as_secs()).ok(),
        ),
    ] {
        if let Some(v) = stated(key) {
            assert_eq!(value, Some(v), "{key}");
        }
    }
    let now = Instant::now();
    for timing in [
        p.heartbeat,
        p.down_after,
        p.repair_delay,
        config.routing.fresh,
        config.routing.probe_timeout,
    ]
    .into_iter()
    .chain(config.connections.timings())
    {
        assert!(now.checked_add(timing * 4).is_some(), "{timing:?}");
    }
    assert!(p.down_after > p.heartbeat);
    assert!(p.default_replicas >= 1 && p.min_replicas >= 1 && p.copies_per_node >= 1);
    let q = &config.quic_limits;
    assert!((1..=q.max_connections).contains(&q.max_strangers));
    assert!((1..=q.max_strangers).contains(&q.max_strangers_per_network));
    for ip in ["10.12.0.1", "::ffff:10.12.0.9", "fd12::1", "0.0.0.0", "::"] {
        let ip: IpAddr = ip.parse().expect("an address");
        let _ = config.region_of(ip);
    }
}
