//! Balancing policies. Each takes the candidate servers (available, untried,
//! already filtered to primaries or backups) and returns an index into them.
//! Callers hold the pool's pick lock, so read-modify-write of per-server
//! state (smooth WRR current weights, in-flight counts) is consistent.
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use rand::Rng;

use crate::upstream::server::Server;

/// One candidate server for a pick.
#[derive(Debug, Clone, Copy)]
pub struct Cand<'a> {
    /// Position of the server in the pool's server set (the ring uses it).
    pub index: usize,
    pub server: &'a Server,
    /// Effective weight (configured weight × 1000, ramped by slow start).
    pub weight: u64,
}

pub use crate::base::hash::hash64;

/// Smooth weighted round robin, exactly as nginx: every candidate's current
/// weight grows by its weight, the largest wins and pays back the total.
/// Weights 5,1,1 give a a b a c a a.
pub fn smooth_wrr(cands: &[Cand<'_>]) -> usize {
    let total: i64 = cands.iter().map(|c| c.weight as i64).sum();
    let mut best = 0;
    let mut best_cw = i64::MIN;
    for (i, c) in cands.iter().enumerate() {
        let cw = c.server.rr_current.fetch_add(c.weight as i64, Relaxed) + c.weight as i64;
        if cw > best_cw {
            best = i;
            best_cw = cw;
        }
    }
    cands[best].server.rr_current.fetch_sub(total, Relaxed);
    best
}

/// Fewest in-flight requests relative to weight; ties broken by smooth WRR
/// among the tied servers (as nginx's least_conn).
pub fn least_conn(cands: &[Cand<'_>]) -> usize {
    // Compare inflight_a / w_a < inflight_b / w_b as inflight_a * w_b < inflight_b * w_a.
    let mut best: Vec<usize> = Vec::with_capacity(cands.len());
    for (i, c) in cands.iter().enumerate() {
        match best.first() {
            None => best.push(i),
            Some(&b) => {
                let lhs = c.server.inflight() as u128 * cands[b].weight as u128;
                let rhs = cands[b].server.inflight() as u128 * c.weight as u128;
                if lhs < rhs {
                    best.clear();
                    best.push(i);
                } else if lhs == rhs {
                    best.push(i);
                }
            }
        }
    }
    if best.len() == 1 {
        return best[0];
    }
    let tied: Vec<Cand<'_>> = best.iter().map(|&i| cands[i]).collect();
    best[smooth_wrr(&tied)]
}

/// Weighted rendezvous score of `key` on a server: the highest wins. Removing
/// a server only moves the keys that were on it.
fn rendezvous_score(key: &[u8], c: &Cand<'_>) -> f64 {
    let h = hash64(&[key, c.server.addr().as_bytes()]);
    // Uniform in (0, 1).
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    c.weight as f64 / -u.ln()
}

/// Client address → server by weighted rendezvous hashing: stable while the
/// set of available servers is unchanged.
pub fn ip_hash(cands: &[Cand<'_>], ip: IpAddr) -> usize {
    let key = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets().to_vec(),
        },
    };
    rendezvous(cands, &key)
}

/// Highest-random-weight choice of `key` among the candidates.
pub fn rendezvous(cands: &[Cand<'_>], key: &[u8]) -> usize {
    let mut best = 0;
    let mut best_score = f64::MIN;
    for (i, c) in cands.iter().enumerate() {
        let s = rendezvous_score(key, c);
        if s > best_score {
            best = i;
            best_score = s;
        }
    }
    best
}

/// Virtual nodes per unit of weight on the hash ring.
const VNODES_PER_WEIGHT: u32 = 100;

/// A consistent-hash ring over a server set (indices into that set).
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Build from (address, weight) pairs; the index of a pair is its server index.
    pub fn new(servers: &[(String, u32)]) -> Ring {
        let mut points = Vec::new();
        for (i, (addr, w)) in servers.iter().enumerate() {
            for v in 0..(w.max(&1) * VNODES_PER_WEIGHT) {
                points.push((hash64(&[addr.as_bytes(), &v.to_le_bytes()]), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Server indices in ring order starting at `key`'s position.
    fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|p| p.0 < key);
        let n = self.points.len();
        (0..n).map(move |i| self.points[(start + i) % n].1 as usize)
    }
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam):
/// walk the ring from the key's point and take the first candidate whose
/// in-flight load is below its bound, ceil(c × (m+1) × w / W) where m is the
/// candidates' total in-flight load. With no load, the key's owner is always
/// chosen (sticky).
pub fn bounded_hash(cands: &[Cand<'_>], ring: &Ring, key: u64, load_factor: f64) -> usize {
    let total_load: u64 = cands.iter().map(|c| c.server.inflight()).sum();
    let total_weight: u64 = cands.iter().map(|c| c.weight).sum::<u64>().max(1);
    let mut first = None;
    let mut seen = 0usize;
    let mut visited = vec![false; cands.iter().map(|c| c.index + 1).max().unwrap_or(0)];
    for idx in ring.walk(key) {
        if idx >= visited.len() || visited[idx] {
            continue;
        }
        let Some(ci) = cands.iter().position(|c| c.index == idx) else {
            continue;
        };
        visited[idx] = true;
        seen += 1;
        first.get_or_insert(ci);
        let c = &cands[ci];
        let bound =
            (load_factor * (total_load + 1) as f64 * c.weight as f64 / total_weight as f64).ceil();
        if (c.server.inflight() as f64) < bound {
            return ci;
        }
        if seen == cands.len() {
            break;
        }
    }
    // Unreachable in practice (the bounds sum to more than the load); stay safe.
    first.unwrap_or(0)
}

/// Plain consistent-hash owner of `key` among candidates (no load bound).
pub fn ring_owner(cands: &[Cand<'_>], ring: &Ring, key: u64) -> usize {
    bounded_hash(cands, ring, key, f64::INFINITY)
}

/// Power of two choices over peak-EWMA latency × (in-flight + 1) / weight.
pub fn p2c(cands: &[Cand<'_>], now: u64) -> usize {
    p2c_with_load(cands, now, 0.0)
}

/// Cost p2c compares: peak-EWMA latency × (in-flight + 1) × (1 + `load_weight`
/// × reported load) / weight. The reported load comes from the server's
/// health response (0 when idle or unknown), so a node busy with long
/// generations costs more even before its latency shows it.
pub fn p2c_cost(c: &Cand<'_>, now: u64, load_weight: f64) -> f64 {
    let load = if load_weight > 0.0 {
        1.0 + load_weight * c.server.load()
    } else {
        1.0
    };
    c.server.ewma_ns(now) * (c.server.inflight() + 1) as f64 * load / c.weight.max(1) as f64
}

/// Power of two choices: two distinct random candidates, the lower
/// [`p2c_cost`] wins.
pub fn p2c_with_load(cands: &[Cand<'_>], now: u64, load_weight: f64) -> usize {
    let n = cands.len();
    if n == 1 {
        return 0;
    }
    let mut rng = rand::thread_rng();
    let a = rng.gen_range(0..n);
    let mut b = rng.gen_range(0..n - 1);
    if b >= a {
        b += 1;
    }
    if p2c_cost(&cands[b], now, load_weight) < p2c_cost(&cands[a], now, load_weight) {
        b
    } else {
        a
    }
}
