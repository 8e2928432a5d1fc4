//! BUGGIFY points (FoundationDB's name): places in the broker that, in the simulation
//! only, sometimes take a rare but legal path — a segment roll before one is due, a
//! leadership transfer nobody asked for, committed entries applied one round late — so
//! that the simulator's seeds exercise what a quiet test run almost never does.
//!
//! The points exist only with the cargo feature `buggify`, which the simulation build
//! (`sim/`) turns on and nothing else does: without it [`fire`] is a constant `false` and
//! every point compiles away. Even with the feature, nothing fires until [`enable`] seeds
//! it; the simulator runs one seed per process and one simulated thread, so a
//! process-wide generator gives the same choices every run of a seed.

/// Whether a BUGGIFY point fires this time, with `probability` (0..=1).
#[cfg(feature = "buggify")]
pub fn fire(probability: f64) -> bool {
    state::fire(probability)
}

/// Always `false` without the `buggify` feature.
#[cfg(not(feature = "buggify"))]
#[inline(always)]
pub fn fire(_probability: f64) -> bool {
    false
}

/// Turns the points on, seeded (the simulator, for the seeds it buggifies).
#[cfg(feature = "buggify")]
pub fn enable(seed: u64) {
    state::enable(seed)
}

#[cfg(feature = "buggify")]
mod state {
    use std::sync::Mutex;

    /// The generator's state; `None` while disabled.
    static STATE: Mutex<Option<u64>> = Mutex::new(None);

    pub fn enable(seed: u64) {
        *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(seed);
    }

    pub fn fire(probability: f64) -> bool {
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let Some(x) = state.as_mut() else {
            return false;
        };
        // splitmix64: small, seedable, the same everywhere.
        *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < probability
    }
}
