//! raft-rs logs through `slog`; this drain forwards every record to `tracing`, so one
//! log stream (and one filter) covers the whole broker. raft-rs logs every role change
//! of every group at info; with a group per partition that drowns the broker's own
//! messages, so its info becomes debug (`log-level = "info,raft=debug"` shows it).

use slog::{Drain, Level, OwnedKVList, Record, KV};
use std::fmt::Write as _;

/// A slog drain that re-emits records as tracing events under target `raft`.
pub struct TracingDrain;

struct Collect(String);

impl slog::Serializer for Collect {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        // raft-rs logs every message it steps at debug level, with the message as a
        // value: format nothing that tracing would drop.
        let enabled = match record.level() {
            Level::Critical | Level::Error => {
                tracing::enabled!(target: "raft", tracing::Level::ERROR)
            }
            Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
            Level::Info => tracing::enabled!(target: "raft", tracing::Level::INFO),
            Level::Debug => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = Collect(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let message = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{message}{}", kv.0),
            Level::Warning => tracing::warn!(target: "raft", "{message}{}", kv.0),
            Level::Info | Level::Debug => tracing::debug!(target: "raft", "{message}{}", kv.0),
            Level::Trace => tracing::trace!(target: "raft", "{message}{}", kv.0),
        }
        Ok(())
    }
}

/// The logger to hand to raft-rs, tagged with the Raft group it belongs to.
pub fn logger(group: &str) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("group" => group.to_string()))
}
