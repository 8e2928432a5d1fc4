//! The one place Strand reads the wall clock.
//!
//! Logic never calls this directly: the edges (request handlers, background tasks) read
//! it and pass `now_ms` down. Under `--cfg madsim` the simulator intercepts the clock,
//! so simulated time flows through here too.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
