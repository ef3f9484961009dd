//! Property tests for the balancers (deterministic seed, so no flakes).
use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use ragfleet_gateway::balance::{self, Cand, Ring};
use ragfleet_gateway::Server;

fn servers(weights: &[u32]) -> Vec<Arc<Server>> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            Arc::new(Server::new(&format!("10.0.0.{}:{}", i + 1, 8000 + i), w, false).unwrap())
        })
        .collect()
}

fn cands(servers: &[Arc<Server>]) -> Vec<Cand<'_>> {
    servers
        .iter()
        .enumerate()
        .map(|(i, s)| Cand {
            index: i,
            server: s,
            weight: s.weight() as u64 * 1000,
        })
        .collect()
}

fn ring(servers: &[Arc<Server>]) -> Ring {
    Ring::new(
        &servers
            .iter()
            .map(|s| (s.addr().to_string(), s.weight()))
            .collect::<Vec<_>>(),
    )
}

fn cfg() -> Config {
    Config {
        cases: 48,
        rng_seed: RngSeed::Fixed(0x7261_6766),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(cfg())]

    /// Smooth WRR gives every server exactly its weight's share per cycle.
    #[test]
    fn smooth_wrr_honours_weights_exactly(weights in prop::collection::vec(1u32..=10, 1..7), cycles in 1usize..4) {
        let s = servers(&weights);
        let c = cands(&s);
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u32; s.len()];
        for _ in 0..total as usize * cycles {
            counts[balance::smooth_wrr(&c)] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            prop_assert_eq!(counts[i], w * cycles as u32);
        }
    }

    /// With no load, least_conn is a tie everywhere and follows the weights.
    #[test]
    fn least_conn_without_load_honours_weights(weights in prop::collection::vec(1u32..=6, 1..6)) {
        let s = servers(&weights);
        let c = cands(&s);
        let total: u32 = weights.iter().sum();
        let mut counts = vec![0u32; s.len()];
        for _ in 0..total * 2 {
            counts[balance::least_conn(&c)] += 1;
        }
        for (i, w) in weights.iter().enumerate() {
            prop_assert_eq!(counts[i], w * 2);
        }
    }

    /// Weighted rendezvous (ip_hash) and the ring (hash) spread keys by weight.
    #[test]
    fn hashing_honours_weights(weights in prop::collection::vec(1u32..=4, 2..6)) {
        let s = servers(&weights);
        let c = cands(&s);
        let r = ring(&s);
        let keys = 20_000u32;
        let mut by_ip = vec![0u32; s.len()];
        let mut by_ring = vec![0u32; s.len()];
        for k in 0..keys {
            let ip = std::net::IpAddr::from(k.wrapping_mul(2_654_435_761).to_be_bytes());
            by_ip[balance::ip_hash(&c, ip)] += 1;
            by_ring[balance::ring_owner(&c, &r, balance::hash64(&[&k.to_le_bytes()]))] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let expect = keys as f64 * w as f64 / total as f64;
            let ip_dev = (by_ip[i] as f64 - expect).abs() / expect;
            let ring_dev = (by_ring[i] as f64 - expect).abs() / expect;
            prop_assert!(ip_dev < 0.1, "ip_hash share of server {} off by {:.0}%", i, ip_dev * 100.0);
            prop_assert!(ring_dev < 0.35, "ring share of server {} off by {:.0}%", i, ring_dev * 100.0);
        }
    }

    /// When a server leaves, only its keys move (about 1/n of them).
    #[test]
    fn a_leaving_server_moves_only_its_keys(n in 3usize..9, leave in 0usize..8) {
        let leave = leave % n;
        let s = servers(&vec![1; n]);
        let all = cands(&s);
        let rest: Vec<Cand<'_>> = all.iter().copied().filter(|c| c.index != leave).collect();
        let r = ring(&s);
        let keys = 4000u32;
        let (mut moved_ring, mut moved_ip) = (0u32, 0u32);
        for k in 0..keys {
            let h = balance::hash64(&[&k.to_le_bytes()]);
            let before = all[balance::ring_owner(&all, &r, h)].index;
            let after = rest[balance::ring_owner(&rest, &r, h)].index;
            if before != after {
                prop_assert_eq!(before, leave, "a key not on the leaving server moved");
                moved_ring += 1;
            }
            let ip = std::net::IpAddr::from(k.wrapping_mul(2_654_435_761).to_be_bytes());
            let before = all[balance::ip_hash(&all, ip)].index;
            let after = rest[balance::ip_hash(&rest, ip)].index;
            if before != after {
                prop_assert_eq!(before, leave);
                moved_ip += 1;
            }
        }
        let ideal = keys as f64 / n as f64;
        for moved in [moved_ring, moved_ip] {
            prop_assert!((moved as f64) > 0.4 * ideal && (moved as f64) < 2.0 * ideal,
                "{} of {} keys moved; ideal {:.0}", moved, keys, ideal);
        }
    }

    /// Bounded loads: however skewed the keys, no server ends above
    /// ceil(c × requests × w / W).
    #[test]
    fn bounded_hash_caps_every_server(
        weights in prop::collection::vec(1u32..=3, 2..6),
        c in 1.0f64..2.0,
        keys in prop::collection::vec(0u8..3, 1..80),
    ) {
        let s = servers(&weights);
        let cs = cands(&s);
        let r = ring(&s);
        let mut guards = Vec::new();
        for k in &keys {
            let i = balance::bounded_hash(&cs, &r, balance::hash64(&[&[*k]]), c);
            guards.push(s[i].start_request());
        }
        let total_w: u32 = weights.iter().sum();
        let mut loads: HashMap<usize, u64> = HashMap::new();
        for (i, srv) in s.iter().enumerate() {
            loads.insert(i, srv.inflight());
        }
        for (i, &w) in weights.iter().enumerate() {
            let bound = (c * keys.len() as f64 * w as f64 / total_w as f64).ceil() as u64;
            prop_assert!(loads[&i] <= bound, "server {} has {} > bound {}", i, loads[&i], bound);
        }
        drop(guards);
        prop_assert!(s.iter().all(|x| x.inflight() == 0));
    }
}
