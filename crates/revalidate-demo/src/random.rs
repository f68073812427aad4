//! The seeded random source: splitmix64 as a hash and as a generator.
//!
//! Everything the simulation draws (data, failures, latencies) comes from
//! here, keyed by the seed and by what is drawn, so that a run replays the
//! same way for a given seed; only [`demo_token`] is seeded by the clock.

/// The splitmix64 finalizer: a fast, well-mixed 64-bit hash of a 64-bit input.
pub(crate) const fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Combines two words into a well-mixed one.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    splitmix(a ^ splitmix(b))
}

/// FNV-1a: stable across runs and platforms, unlike std's `DefaultHasher`,
/// which the determinism promise needs.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

/// A hash of the seed, a salt naming what is drawn, and some numbers.
pub(crate) fn hash(seed: u64, salt: &str, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(mix(seed, fnv1a(salt.as_bytes())), |h, &p| mix(h, p))
}

/// splitmix64 as a generator: tiny, fast and good enough for a simulation.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator whose stream is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0. The modulo bias is below 2^-50
    /// for the small `n` used here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One of `items`, uniformly; `items` must not be empty.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = self.below(items.len() as u64);
        &items[usize::try_from(i).unwrap_or(0)]
    }

    /// One of `items`, in proportion to its weight; `items` must not be
    /// empty.
    pub(crate) fn weighted<'a, T>(&mut self, items: &'a [(T, u64)]) -> &'a T {
        let total: u64 = items.iter().map(|(_, w)| w).sum();
        let mut draw = self.below(total);
        for (item, weight) in items {
            if draw < *weight {
                return item;
            }
            draw -= weight;
        }
        &items[items.len() - 1].0
    }
}

/// A token for the dashboard's invalidate button, different every run: the
/// clock and the process id, mixed.
pub fn demo_token() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    format!("demo-{:016x}", splitmix(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_values() {
        // The first outputs of the reference splitmix64 generator seeded
        // with 0 (Vigna's splitmix64.c): `splitmix(n × γ)` is its output
        // n + 1. `Rng` steps its state before the finalizer adds γ again,
        // so its stream starts at the reference's second output; the
        // simulation's data depends on that, so it stays.
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        assert_eq!(splitmix(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix(GAMMA), 0x6E78_9E6A_A1B9_65F4);
        let mut rng = Rng::new(0);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut rng = Rng::new(42);
        for _ in 0..10_000 {
            assert!((0.0..1.0).contains(&rng.unit()));
            assert!(rng.below(7) < 7);
            assert!((-2.0..3.0).contains(&rng.range(-2.0, 3.0)));
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(*rng.weighted(&[("only", 0), ("this", 5)]), "this");
    }

    #[test]
    fn hashes_depend_on_seed_salt_and_parts() {
        assert_eq!(hash(1, "a", &[2]), hash(1, "a", &[2]));
        assert_ne!(hash(1, "a", &[2]), hash(2, "a", &[2]));
        assert_ne!(hash(1, "a", &[2]), hash(1, "b", &[2]));
        assert_ne!(hash(1, "a", &[2]), hash(1, "a", &[3]));
    }

    #[test]
    fn demo_tokens_look_alike_and_differ() {
        let a = demo_token();
        assert!(a.starts_with("demo-") && a.len() == 21, "{a}");
        assert!(a[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        // Nanoseconds apart, or at worst a different clock reading.
        let b = (0..100).map(|_| demo_token()).find(|b| *b != a);
        assert!(b.is_some(), "every token was {a}");
    }
}
