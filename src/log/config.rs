//! Topic-level log configuration: the Kafka topic configs Strand honours, their
//! defaults, and parsing/validation of their string values.

use std::collections::BTreeMap;

/// Effective settings of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment's first batch is this old.
    pub segment_ms: i64,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest segments while the log is larger; -1 means no limit.
    pub retention_bytes: i64,
    /// `index.interval.bytes`: log bytes between two offset-index entries.
    pub index_interval_bytes: u64,
    /// `max.message.bytes`: largest record batch accepted.
    pub max_message_bytes: u64,
    /// `min.insync.replicas`: replicas that must have a write for acks=all.
    pub min_insync_replicas: i64,
    /// `cleanup.policy` holds `delete`: segments go by `retention.ms`/`retention.bytes`.
    pub cleanup_policy_delete: bool,
    /// `cleanup.policy` holds `compact`: the cleaner keeps the latest record per key.
    pub cleanup_policy_compact: bool,
    /// `delete.retention.ms`: how long a tombstone stays readable (by its timestamp).
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`, in millionths: clean when the dirty part of the
    /// cleanable log is at least this share of it.
    pub min_cleanable_dirty_ratio_ppm: u32,
    /// `min.compaction.lag.ms`: records younger than this are never cleaned.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this is cleaned whatever the
    /// dirty ratio.
    pub max_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            max_message_bytes: 1_048_588,
            min_insync_replicas: 1,
            cleanup_policy_delete: true,
            cleanup_policy_compact: false,
            delete_retention_ms: 86_400_000,
            min_cleanable_dirty_ratio_ppm: 500_000,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

/// One topic config Strand knows: its name, and whether it may be changed.
pub struct ConfigKey {
    pub name: &'static str,
    pub doc: &'static str,
}

/// Every topic config Strand accepts. Anything else is refused with INVALID_CONFIG.
pub const TOPIC_CONFIG_KEYS: &[ConfigKey] = &[
    ConfigKey {
        name: "segment.bytes",
        doc: "segment size in bytes before a roll",
    },
    ConfigKey {
        name: "segment.ms",
        doc: "segment age in ms before a roll",
    },
    ConfigKey {
        name: "retention.ms",
        doc: "age in ms after which segments are deleted, -1 for never",
    },
    ConfigKey {
        name: "retention.bytes",
        doc: "partition size in bytes above which old segments are deleted, -1 for none",
    },
    ConfigKey {
        name: "index.interval.bytes",
        doc: "bytes between offset index entries",
    },
    ConfigKey {
        name: "max.message.bytes",
        doc: "largest record batch accepted",
    },
    ConfigKey {
        name: "cleanup.policy",
        doc: "'delete', 'compact' or both ('compact,delete'): delete old segments, keep the latest record per key",
    },
    ConfigKey {
        name: "delete.retention.ms",
        doc: "how long tombstones of a compacted topic stay readable, by their timestamp",
    },
    ConfigKey {
        name: "min.cleanable.dirty.ratio",
        doc: "share of the cleanable log not yet cleaned above which the cleaner runs",
    },
    ConfigKey {
        name: "min.compaction.lag.ms",
        doc: "records younger than this are never compacted",
    },
    ConfigKey {
        name: "max.compaction.lag.ms",
        doc: "a record not yet compacted this long after its timestamp is, whatever the dirty ratio",
    },
    ConfigKey {
        name: "message.timestamp.type",
        doc: "only 'CreateTime'",
    },
    ConfigKey {
        name: "min.insync.replicas",
        doc: "replicas that must have a write for acks=all",
    },
    ConfigKey {
        name: "compression.type",
        doc: "only 'producer': batches are stored as sent",
    },
];

/// Why a config value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for topic config {name}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

fn err(name: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_i64(name: &str, value: &str, min: i64) -> Result<i64, ConfigError> {
    let v: i64 = value
        .trim()
        .parse()
        .map_err(|_| err(name, value, "not an integer"))?;
    if v < min {
        return Err(err(name, value, &format!("must be at least {min}")));
    }
    Ok(v)
}

/// Checks one topic config name and value.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ConfigError> {
    let mut scratch = LogConfig::default();
    apply_one(&mut scratch, name, value)
}

fn apply_one(config: &mut LogConfig, name: &str, value: &str) -> Result<(), ConfigError> {
    match name {
        "segment.bytes" => {
            // An INT config in Kafka: refuse what would otherwise be silently clamped.
            let v = parse_i64(name, value, 14)?;
            if v > i32::MAX as i64 {
                return Err(err(name, value, &format!("must be at most {}", i32::MAX)));
            }
            config.segment_bytes = v as u64
        }
        "segment.ms" => config.segment_ms = parse_i64(name, value, 1)?,
        "retention.ms" => config.retention_ms = parse_i64(name, value, -1)?,
        "retention.bytes" => config.retention_bytes = parse_i64(name, value, -1)?,
        "index.interval.bytes" => config.index_interval_bytes = parse_i64(name, value, 0)? as u64,
        "max.message.bytes" => config.max_message_bytes = parse_i64(name, value, 0)? as u64,
        "cleanup.policy" => {
            let (delete, compact) = parse_cleanup_policy(value)?;
            config.cleanup_policy_delete = delete;
            config.cleanup_policy_compact = compact;
        }
        "delete.retention.ms" => config.delete_retention_ms = parse_i64(name, value, 0)?,
        "min.cleanable.dirty.ratio" => {
            let ratio: f64 = value
                .trim()
                .parse()
                .map_err(|_| err(name, value, "not a number"))?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(err(name, value, "must be between 0 and 1"));
            }
            config.min_cleanable_dirty_ratio_ppm = (ratio * 1e6).round() as u32;
        }
        "min.compaction.lag.ms" => config.min_compaction_lag_ms = parse_i64(name, value, 0)?,
        "max.compaction.lag.ms" => config.max_compaction_lag_ms = parse_i64(name, value, 1)?,
        "message.timestamp.type" if value == "CreateTime" => {}
        "message.timestamp.type" => return Err(err(name, value, "only 'CreateTime' is supported")),
        "min.insync.replicas" => config.min_insync_replicas = parse_i64(name, value, 1)?,
        "compression.type" if value == "producer" => {}
        "compression.type" => return Err(err(name, value, "only 'producer' is supported")),
        _ => return Err(err(name, value, "unknown topic config")),
    }
    Ok(())
}

/// `cleanup.policy`: a list of `delete` and `compact` (either order, each at most once,
/// not empty). Returns (delete, compact).
fn parse_cleanup_policy(value: &str) -> Result<(bool, bool), ConfigError> {
    let name = "cleanup.policy";
    let (mut delete, mut compact) = (false, false);
    for item in value.split(',').map(str::trim) {
        let seen = match item {
            "delete" => std::mem::replace(&mut delete, true),
            "compact" => std::mem::replace(&mut compact, true),
            _ => return Err(err(name, value, "a list of 'delete' and 'compact'")),
        };
        if seen {
            return Err(err(name, value, "a policy is named twice"));
        }
    }
    Ok((delete, compact))
}

/// The effective config: `defaults` with `overrides` (already validated) applied.
pub fn effective_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig, ConfigError> {
    let mut config = defaults.clone();
    for (name, value) in overrides {
        apply_one(&mut config, name, value)?;
    }
    Ok(config)
}

/// The value of each known config under `config`, as Kafka's DescribeConfigs shows it.
pub fn describe(config: &LogConfig, name: &str) -> Option<String> {
    Some(match name {
        "segment.bytes" => config.segment_bytes.to_string(),
        "segment.ms" => config.segment_ms.to_string(),
        "retention.ms" => config.retention_ms.to_string(),
        "retention.bytes" => config.retention_bytes.to_string(),
        "index.interval.bytes" => config.index_interval_bytes.to_string(),
        "max.message.bytes" => config.max_message_bytes.to_string(),
        "cleanup.policy" => match (config.cleanup_policy_compact, config.cleanup_policy_delete) {
            (true, true) => "compact,delete".into(),
            (true, false) => "compact".into(),
            _ => "delete".into(),
        },
        "delete.retention.ms" => config.delete_retention_ms.to_string(),
        "min.cleanable.dirty.ratio" => {
            format!("{}", config.min_cleanable_dirty_ratio_ppm as f64 / 1e6)
        }
        "min.compaction.lag.ms" => config.min_compaction_lag_ms.to_string(),
        "max.compaction.lag.ms" => config.max_compaction_lag_ms.to_string(),
        "message.timestamp.type" => "CreateTime".into(),
        "min.insync.replicas" => config.min_insync_replicas.to_string(),
        "compression.type" => "producer".into(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_configs_parse_and_unknown_are_refused() {
        let mut overrides = BTreeMap::new();
        overrides.insert("segment.bytes".to_string(), "1024".to_string());
        overrides.insert("retention.ms".to_string(), "-1".to_string());
        let config = effective_config(&LogConfig::default(), &overrides).unwrap();
        assert_eq!(config.segment_bytes, 1024);
        assert_eq!(config.retention_ms, -1);
        assert!(validate_topic_config("no.such.config", "1").is_err());
        assert!(validate_topic_config("segment.bytes", "abc").is_err());
        assert!(validate_topic_config("retention.ms", "-2").is_err());
        assert!(validate_topic_config("cleanup.policy", "compacted").is_err());
        assert!(validate_topic_config("cleanup.policy", "").is_err());
        assert!(validate_topic_config("cleanup.policy", "delete,delete").is_err());
        assert!(validate_topic_config("min.cleanable.dirty.ratio", "1.5").is_err());
        for (value, delete, compact) in [
            ("compact", false, true),
            ("delete", true, false),
            ("compact,delete", true, true),
            ("delete, compact", true, true),
        ] {
            let overrides = BTreeMap::from([("cleanup.policy".to_string(), value.to_string())]);
            let config = effective_config(&LogConfig::default(), &overrides).unwrap();
            assert_eq!(
                (config.cleanup_policy_delete, config.cleanup_policy_compact),
                (delete, compact)
            );
            let shown = describe(&config, "cleanup.policy").unwrap();
            validate_topic_config("cleanup.policy", &shown).unwrap();
        }
        let overrides =
            BTreeMap::from([("min.cleanable.dirty.ratio".to_string(), "0.01".to_string())]);
        let config = effective_config(&LogConfig::default(), &overrides).unwrap();
        assert_eq!(config.min_cleanable_dirty_ratio_ppm, 10_000);
        assert_eq!(
            describe(&config, "min.cleanable.dirty.ratio").unwrap(),
            "0.01"
        );
        for key in TOPIC_CONFIG_KEYS {
            let value = describe(&LogConfig::default(), key.name).unwrap();
            validate_topic_config(key.name, &value).unwrap();
        }
    }
}
