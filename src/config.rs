//! Broker configuration: built-in defaults, an optional TOML file, then command-line
//! flags (a flag overrides the file). Unknown or invalid settings are refused at start
//! with a message that names the setting.

use crate::group::coordinator::CoordinatorConfig;
use crate::log::config::{effective_config, validate_topic_config, LogConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Address the listener binds.
    pub listen: SocketAddr,
    /// Host and port clients are told to connect to (Metadata, DescribeCluster).
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
    pub log_level: String,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic or a CreateTopics with -1.
    pub default_partitions: i32,
    /// `socket.request.max.bytes`: largest request frame accepted.
    pub socket_request_max_bytes: usize,
    /// Requests read ahead of their responses on one connection.
    pub max_in_flight_requests_per_connection: usize,
    /// Open connections accepted at once.
    pub max_connections: usize,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// How often the recovery-point checkpoint is rewritten.
    pub recovery_checkpoint_interval_ms: u64,
    /// `log.cleaner.backoff.ms`: how often the cleaner looks at compacted partitions.
    pub log_cleaner_backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`: memory for the cleaner's key map (bounds the
    /// keys one clean covers; a larger log is cleaned in passes).
    pub log_cleaner_dedupe_buffer_bytes: usize,
    /// Topic config defaults (`segment.bytes`, `retention.ms`, ...).
    pub log_defaults: LogConfig,
    /// Seed of the broker's RNG (cluster id, topic ids). None: drawn at start.
    pub seed: Option<u64>,
    /// The cluster's brokers (every one a voter of the metadata quorum), by node id, with
    /// the address of each one's Raft listener. Empty: a cluster of this broker alone.
    pub peers: BTreeMap<i32, SocketAddr>,
    /// Address the Raft listener binds (default: this broker's address in `peers`).
    pub raft_listen: Option<SocketAddr>,
    /// `default.replication.factor`: replicas of a topic created without a factor.
    pub default_replication_factor: i16,
    /// Raft tick: heartbeats every 2 ticks, elections after 10 to 20 silent ticks.
    pub raft_tick_ms: u64,
    /// `broker.session.timeout.ms`: a broker silent this long is fenced.
    pub broker_session_timeout_ms: u64,
    /// Consumer groups: the offsets topic and the group coordinator's settings.
    pub groups: GroupConfig,
    /// Transactions and idempotent producers.
    pub txns: TxnServiceConfig,
}

/// The transaction coordinator's settings and producer id expiry (Kafka's names in the
/// comments).
#[derive(Debug, Clone)]
pub struct TxnServiceConfig {
    /// `transaction.state.log.num.partitions`: partitions of `__transaction_state`.
    pub transaction_state_partitions: i32,
    /// `transaction.state.log.replication.factor` (at most the cluster's size).
    pub transaction_state_replication_factor: i16,
    /// `transaction.max.timeout.ms` and `transactional.id.expiration.ms`.
    pub coordinator: crate::txn::coordinator::TxnConfig,
    /// `producer.id.expiration.ms`: a partition forgets a producer silent this long.
    pub producer_id_expiration_ms: i64,
    /// `transaction.partition.verification.enable` (KIP-890 part 1): a partition leader
    /// asks the coordinator before a transactional batch opens a transaction there.
    pub transaction_partition_verification_enable: bool,
    /// The `transaction.version` feature level ApiVersions finalizes: 2 (Kafka 4's
    /// default) lets clients use transaction version 2 (KIP-890 part 2: Produce v12,
    /// TxnOffsetCommit v5, EndTxn v5); 1 keeps them on version 1.
    pub transaction_version: i16,
}

/// The `transaction.version` levels Strand supports (ApiVersions' supported range).
pub const TRANSACTION_VERSION_MAX: i16 = 2;

impl Default for TxnServiceConfig {
    fn default() -> Self {
        TxnServiceConfig {
            transaction_state_partitions: crate::txn::host::DEFAULT_PARTITIONS,
            transaction_state_replication_factor: 3,
            coordinator: Default::default(),
            producer_id_expiration_ms:
                crate::log::producer_state::DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            transaction_partition_verification_enable: true,
            transaction_version: TRANSACTION_VERSION_MAX,
        }
    }
}

/// The consumer group settings (Kafka's names in the comments).
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`, fixed when it
    /// is created.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.replication.factor` (at most the cluster's size).
    pub offsets_topic_replication_factor: i16,
    /// Session and rebalance limits, initial rebalance delay, offset retention.
    pub coordinator: CoordinatorConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_partitions: 50,
            offsets_topic_replication_factor: 3,
            coordinator: CoordinatorConfig::default(),
        }
    }
}

/// Most brokers a cluster may list in `peers` (all of them metadata voters).
pub const MAX_PEERS: usize = 64;

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            listen: "127.0.0.1:9092".parse().unwrap(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            data_dir: PathBuf::from("./strand-data"),
            log_level: "info".into(),
            auto_create_topics: true,
            default_partitions: 1,
            socket_request_max_bytes: 100 * 1024 * 1024,
            max_in_flight_requests_per_connection: 32,
            max_connections: 1024,
            retention_check_interval_ms: 30_000,
            recovery_checkpoint_interval_ms: 10_000,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_bytes: 128 << 20,
            log_defaults: LogConfig::default(),
            seed: None,
            peers: BTreeMap::new(),
            raft_listen: None,
            default_replication_factor: 1,
            raft_tick_ms: 100,
            broker_session_timeout_ms: 9_000,
            groups: GroupConfig::default(),
            txns: TxnServiceConfig::default(),
        }
    }
}

impl BrokerConfig {
    /// Whether this broker runs with others (`peers` lists more than itself).
    pub fn is_clustered(&self) -> bool {
        self.peers.keys().any(|id| *id != self.node_id)
    }
}

/// The TOML file: the same settings as the flags, plus broker settings and topic defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub node_id: Option<i32>,
    pub listen: Option<String>,
    pub advertised_listener: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub auto_create_topics_enable: Option<bool>,
    pub num_partitions: Option<i32>,
    pub socket_request_max_bytes: Option<usize>,
    pub max_in_flight_requests_per_connection: Option<usize>,
    pub max_connections: Option<usize>,
    pub retention_check_interval_ms: Option<u64>,
    pub recovery_checkpoint_interval_ms: Option<u64>,
    pub log_cleaner_backoff_ms: Option<u64>,
    pub log_cleaner_dedupe_buffer_size: Option<usize>,
    /// `ID@IP:PORT,...`: every broker of the cluster with its Raft address.
    pub peers: Option<String>,
    pub raft_listen: Option<String>,
    pub default_replication_factor: Option<i16>,
    pub raft_tick_ms: Option<u64>,
    pub broker_session_timeout_ms: Option<u64>,
    pub offsets_topic_num_partitions: Option<i32>,
    pub offsets_topic_replication_factor: Option<i16>,
    pub offsets_retention_minutes: Option<i64>,
    pub group_initial_rebalance_delay_ms: Option<i32>,
    pub group_min_session_timeout_ms: Option<i32>,
    pub group_max_session_timeout_ms: Option<i32>,
    pub group_max_size: Option<usize>,
    pub transaction_state_log_num_partitions: Option<i32>,
    pub transaction_state_log_replication_factor: Option<i16>,
    pub transaction_max_timeout_ms: Option<i32>,
    pub transactional_id_expiration_ms: Option<i64>,
    pub producer_id_expiration_ms: Option<i64>,
    pub transaction_partition_verification_enable: Option<bool>,
    pub transaction_version: Option<i16>,
    /// Topic config defaults by their Kafka names, e.g. `"retention.ms" = "3600000"`.
    #[serde(default)]
    pub topic_defaults: BTreeMap<String, String>,
}

/// Settings given on the command line (each overrides the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub node_id: Option<i32>,
    pub listen: Option<String>,
    pub advertised_listener: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub peers: Option<String>,
}

/// Parses `peers`: `ID@IP:PORT` entries separated by commas, distinct ids and addresses.
pub fn parse_peers(value: &str) -> Result<BTreeMap<i32, SocketAddr>, String> {
    let mut peers = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| format!("peers: expected ID@IP:PORT, got {entry:?}"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("peers: invalid node id in {entry:?}"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("peers: expected IP:PORT in {entry:?}"))?;
        if peers.values().any(|a| *a == addr) {
            return Err(format!("peers: address {addr} listed twice"));
        }
        if peers.insert(id, addr).is_some() {
            return Err(format!("peers: node {id} listed twice"));
        }
        if peers.len() > MAX_PEERS {
            return Err(format!("peers: at most {MAX_PEERS} brokers"));
        }
    }
    Ok(peers)
}

/// Splits `HOST:PORT`.
pub fn parse_host_port(setting: &str, value: &str) -> Result<(String, u16), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{setting}: expected HOST:PORT, got {value:?}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{setting}: invalid port in {value:?}"))?;
    // Brackets (IPv6) are not part of the host: "[]:9092" has an empty one.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{setting}: empty host in {value:?}"));
    }
    Ok((host.to_string(), port))
}

impl BrokerConfig {
    /// Builds the config from an optional file's text and the flags.
    pub fn build(file_text: Option<&str>, flags: &Overrides) -> Result<BrokerConfig, String> {
        let file: ConfigFile = match file_text {
            Some(text) => toml::from_str(text).map_err(|e| format!("config file: {e}"))?,
            None => ConfigFile::default(),
        };
        let mut config = BrokerConfig {
            groups: group_config(&file)?,
            txns: txn_config(&file)?,
            ..BrokerConfig::default()
        };
        if let Some(v) = flags.node_id.or(file.node_id) {
            if v < 0 {
                return Err(format!("node-id: must be >= 0, got {v}"));
            }
            config.node_id = v;
        }
        let listen = flags.listen.clone().or(file.listen);
        if let Some(v) = &listen {
            config.listen = v
                .parse()
                .map_err(|_| format!("listen: expected IP:PORT, got {v:?}"))?;
        }
        match flags
            .advertised_listener
            .clone()
            .or(file.advertised_listener)
        {
            Some(v) => {
                let (host, port) = parse_host_port("advertised-listener", &v)?;
                config.advertised_host = host;
                config.advertised_port = port as i32;
            }
            None => {
                config.advertised_host = config.listen.ip().to_string();
                config.advertised_port = config.listen.port() as i32;
            }
        }
        if let Some(v) = flags.data_dir.clone().or(file.data_dir) {
            config.data_dir = v;
        }
        if let Some(v) = flags.log_level.clone().or(file.log_level) {
            // tracing-subscriber's directive parser panics on some non-ASCII input, and
            // compiles span field filters (`{field=value}`) as regexes that can take
            // minutes to build: neither belongs in a broker's log level.
            if !v.is_ascii() {
                return Err(format!("log-level: must be ASCII, got {v:?}"));
            }
            if v.contains('{') {
                return Err(format!(
                    "log-level: span field filters ({{...}}) are not supported, got {v:?}"
                ));
            }
            tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| format!("log-level: {e}"))?;
            config.log_level = v;
        }
        if let Some(v) = file.auto_create_topics_enable {
            config.auto_create_topics = v;
        }
        if let Some(v) = file.num_partitions {
            if !(1..=10_000).contains(&v) {
                return Err(format!("num-partitions: must be in 1..=10000, got {v}"));
            }
            config.default_partitions = v;
        }
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(format!("{name}: must be > 0"))
            } else {
                Ok(v)
            }
        };
        if let Some(v) = file.socket_request_max_bytes {
            config.socket_request_max_bytes =
                positive("socket-request-max-bytes", v as u64)? as usize;
        }
        if let Some(v) = file.max_in_flight_requests_per_connection {
            config.max_in_flight_requests_per_connection =
                positive("max-in-flight-requests-per-connection", v as u64)? as usize;
        }
        if let Some(v) = file.max_connections {
            config.max_connections = positive("max-connections", v as u64)? as usize;
        }
        if let Some(v) = file.retention_check_interval_ms {
            config.retention_check_interval_ms = positive("retention-check-interval-ms", v)?;
        }
        if let Some(v) = file.recovery_checkpoint_interval_ms {
            config.recovery_checkpoint_interval_ms =
                positive("recovery-checkpoint-interval-ms", v)?;
        }
        if let Some(v) = file.log_cleaner_backoff_ms {
            config.log_cleaner_backoff_ms = positive("log-cleaner-backoff-ms", v)?;
        }
        if let Some(v) = file.log_cleaner_dedupe_buffer_size {
            if v < 1 << 16 {
                return Err(format!(
                    "log-cleaner-dedupe-buffer-size: must be at least 65536, got {v}"
                ));
            }
            config.log_cleaner_dedupe_buffer_bytes = v;
        }
        for (name, value) in &file.topic_defaults {
            validate_topic_config(name, value).map_err(|e| format!("topic-defaults: {e}"))?;
        }
        config.log_defaults = effective_config(&LogConfig::default(), &file.topic_defaults)
            .map_err(|e| format!("topic-defaults: {e}"))?;
        if let Some(v) = flags.peers.clone().or(file.peers) {
            config.peers = parse_peers(&v)?;
            if !config.peers.is_empty() && !config.peers.contains_key(&config.node_id) {
                return Err(format!(
                    "peers: must list this broker (node {}) too",
                    config.node_id
                ));
            }
        }
        if let Some(v) = file.raft_listen {
            config.raft_listen = Some(
                v.parse()
                    .map_err(|_| format!("raft-listen: expected IP:PORT, got {v:?}"))?,
            );
        }
        config.default_replication_factor = match file.default_replication_factor {
            Some(v) if v < 1 => {
                return Err(format!("default-replication-factor: must be >= 1, got {v}"))
            }
            Some(v) if v as usize > config.peers.len().max(1) => {
                return Err(format!(
                    "default-replication-factor: {v} is more than the {} brokers in peers",
                    config.peers.len().max(1)
                ))
            }
            Some(v) => v,
            None => config.peers.len().clamp(1, 3) as i16,
        };
        if let Some(v) = file.raft_tick_ms {
            if !(1..=10_000).contains(&v) {
                return Err(format!("raft-tick-ms: must be in 1..=10000, got {v}"));
            }
            config.raft_tick_ms = v;
        }
        if let Some(v) = file.broker_session_timeout_ms {
            if !(1_000..=3_600_000).contains(&v) {
                return Err(format!(
                    "broker-session-timeout-ms: must be in 1000..=3600000, got {v}"
                ));
            }
            config.broker_session_timeout_ms = v;
        }
        Ok(config)
    }
}

/// The transaction settings of the file, checked.
fn txn_config(file: &ConfigFile) -> Result<TxnServiceConfig, String> {
    let mut txns = TxnServiceConfig::default();
    if let Some(v) = file.transaction_state_log_num_partitions {
        if !(1..=1000).contains(&v) {
            return Err(format!(
                "transaction-state-log-num-partitions: must be in 1..=1000, got {v}"
            ));
        }
        txns.transaction_state_partitions = v;
    }
    if let Some(v) = file.transaction_state_log_replication_factor {
        if v < 1 {
            return Err(format!(
                "transaction-state-log-replication-factor: must be >= 1, got {v}"
            ));
        }
        txns.transaction_state_replication_factor = v;
    }
    if let Some(v) = file.transaction_max_timeout_ms {
        if v < 1 {
            return Err(format!("transaction-max-timeout-ms: must be >= 1, got {v}"));
        }
        txns.coordinator.transaction_max_timeout_ms = v;
    }
    if let Some(v) = file.transactional_id_expiration_ms {
        if v < 1 {
            return Err(format!(
                "transactional-id-expiration-ms: must be >= 1, got {v}"
            ));
        }
        txns.coordinator.transactional_id_expiration_ms = v;
    }
    if let Some(v) = file.producer_id_expiration_ms {
        if v < 1 {
            return Err(format!("producer-id-expiration-ms: must be >= 1, got {v}"));
        }
        txns.producer_id_expiration_ms = v;
    }
    if let Some(v) = file.transaction_partition_verification_enable {
        txns.transaction_partition_verification_enable = v;
    }
    if let Some(v) = file.transaction_version {
        if !(1..=TRANSACTION_VERSION_MAX).contains(&v) {
            return Err(format!(
                "transaction-version: must be 1 or {TRANSACTION_VERSION_MAX}, got {v}"
            ));
        }
        txns.transaction_version = v;
    }
    Ok(txns)
}

/// The consumer group settings of the file, checked.
fn group_config(file: &ConfigFile) -> Result<GroupConfig, String> {
    let mut groups = GroupConfig::default();
    let coordinator = &mut groups.coordinator;
    if let Some(v) = file.offsets_topic_num_partitions {
        if !(1..=1000).contains(&v) {
            return Err(format!(
                "offsets-topic-num-partitions: must be in 1..=1000, got {v}"
            ));
        }
        groups.offsets_topic_partitions = v;
    }
    if let Some(v) = file.offsets_topic_replication_factor {
        if v < 1 {
            return Err(format!(
                "offsets-topic-replication-factor: must be >= 1, got {v}"
            ));
        }
        groups.offsets_topic_replication_factor = v;
    }
    if let Some(v) = file.offsets_retention_minutes {
        if !(1..=i64::MAX / 60_000).contains(&v) {
            return Err(format!("offsets-retention-minutes: must be >= 1, got {v}"));
        }
        coordinator.offsets_retention_ms = v * 60_000;
    }
    if let Some(v) = file.group_initial_rebalance_delay_ms {
        if !(0..=600_000).contains(&v) {
            return Err(format!(
                "group-initial-rebalance-delay-ms: must be in 0..=600000, got {v}"
            ));
        }
        coordinator.initial_rebalance_delay_ms = v;
    }
    if let Some(v) = file.group_min_session_timeout_ms {
        coordinator.min_session_timeout_ms = v;
    }
    if let Some(v) = file.group_max_session_timeout_ms {
        coordinator.max_session_timeout_ms = v;
    }
    if coordinator.min_session_timeout_ms < 1
        || coordinator.min_session_timeout_ms > coordinator.max_session_timeout_ms
    {
        return Err(format!(
            "group-min-session-timeout-ms ({}) must be >= 1 and at most group-max-session-timeout-ms ({})",
            coordinator.min_session_timeout_ms, coordinator.max_session_timeout_ms
        ));
    }
    if let Some(v) = file.group_max_size {
        if v == 0 {
            return Err("group-max-size: must be > 0".into());
        }
        coordinator.max_group_size = v;
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_flags() {
        let c = BrokerConfig::build(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
        assert_eq!(c.data_dir, PathBuf::from("./strand-data"));
        assert_eq!(c.node_id, 1);
        assert_eq!(
            (c.advertised_host.as_str(), c.advertised_port),
            ("127.0.0.1", 9092)
        );
    }

    #[test]
    fn flags_override_file() {
        let file = "node-id = 4\nlisten = \"127.0.0.1:9000\"\n[topic-defaults]\n\"retention.ms\" = \"5000\"\n";
        let flags = Overrides {
            node_id: Some(7),
            ..Default::default()
        };
        let c = BrokerConfig::build(Some(file), &flags).unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.advertised_port, 9000);
        assert_eq!(c.log_defaults.retention_ms, 5000);
    }

    #[test]
    fn cleaner_settings() {
        let file = "log-cleaner-backoff-ms = 200\nlog-cleaner-dedupe-buffer-size = 1048576\n[topic-defaults]\n\"cleanup.policy\" = \"compact\"\n";
        let c = BrokerConfig::build(Some(file), &Overrides::default()).unwrap();
        assert_eq!(c.log_cleaner_backoff_ms, 200);
        assert_eq!(c.log_cleaner_dedupe_buffer_bytes, 1 << 20);
        assert!(c.log_defaults.cleanup_policy_compact && !c.log_defaults.cleanup_policy_delete);
        for bad in [
            "log-cleaner-backoff-ms = 0\n",
            "log-cleaner-dedupe-buffer-size = 10\n",
        ] {
            assert!(
                BrokerConfig::build(Some(bad), &Overrides::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn transaction_version_is_1_or_2() {
        let c = BrokerConfig::build(None, &Overrides::default()).unwrap();
        assert_eq!(c.txns.transaction_version, 2);
        let one = BrokerConfig::build(Some("transaction-version = 1\n"), &Overrides::default());
        assert_eq!(one.unwrap().txns.transaction_version, 1);
        for bad in ["transaction-version = 0\n", "transaction-version = 3\n"] {
            let err = BrokerConfig::build(Some(bad), &Overrides::default()).unwrap_err();
            assert!(err.contains("transaction-version"), "{bad}: {err}");
        }
    }

    #[test]
    fn peers_name_every_broker_once() {
        let flags = Overrides {
            node_id: Some(2),
            peers: Some("1@127.0.0.1:19092, 2@127.0.0.1:19093,3@127.0.0.1:19094".into()),
            ..Default::default()
        };
        let c = BrokerConfig::build(None, &flags).unwrap();
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers[&2].port(), 19093);
        assert!(c.is_clustered());
        assert_eq!(c.default_replication_factor, 3);
        for (peers, wanted) in [
            ("1@127.0.0.1:1,1@127.0.0.1:2", "listed twice"),
            ("1@127.0.0.1:1,3@127.0.0.1:1", "listed twice"),
            ("1@localhost:1", "IP:PORT"),
            ("x@127.0.0.1:1", "node id"),
            ("3@127.0.0.1:1", "this broker"),
        ] {
            let flags = Overrides {
                peers: Some(peers.into()),
                ..Default::default()
            };
            let err = BrokerConfig::build(None, &flags).unwrap_err();
            assert!(err.contains(wanted), "{peers}: {err}");
        }
        let alone = BrokerConfig::build(None, &Overrides::default()).unwrap();
        assert!(!alone.is_clustered());
        assert_eq!(alone.default_replication_factor, 1);
        let err = BrokerConfig::build(
            Some("default-replication-factor = 2\n"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn unknown_and_invalid_settings_are_named() {
        let err =
            BrokerConfig::build(Some("no-such-setting = 1\n"), &Overrides::default()).unwrap_err();
        assert!(err.contains("no-such-setting"), "{err}");
        let err = BrokerConfig::build(
            Some("[topic-defaults]\n\"segment.bytes\" = \"x\"\n"),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.contains("segment.bytes"), "{err}");
        let flags = Overrides {
            listen: Some("nonsense".into()),
            ..Default::default()
        };
        assert!(BrokerConfig::build(None, &flags)
            .unwrap_err()
            .contains("listen"));
    }

    #[test]
    fn group_settings_are_read_and_checked() {
        let file = "offsets-topic-num-partitions = 6\noffsets-retention-minutes = 2\ngroup-initial-rebalance-delay-ms = 0\n";
        let c = BrokerConfig::build(Some(file), &Overrides::default()).unwrap();
        assert_eq!(c.groups.offsets_topic_partitions, 6);
        assert_eq!(c.groups.coordinator.offsets_retention_ms, 120_000);
        assert_eq!(c.groups.coordinator.initial_rebalance_delay_ms, 0);
        let defaults = BrokerConfig::build(None, &Overrides::default()).unwrap();
        assert_eq!(defaults.groups.offsets_topic_partitions, 50);
        for bad in [
            "offsets-topic-num-partitions = 0",
            "offsets-topic-replication-factor = 0",
            "offsets-retention-minutes = 0",
            "group-min-session-timeout-ms = 9000\ngroup-max-session-timeout-ms = 8000",
            "group-max-size = 0",
        ] {
            let name = bad.split(' ').next().unwrap();
            let error = BrokerConfig::build(Some(bad), &Overrides::default()).unwrap_err();
            assert!(error.contains(name), "{bad}: {error}");
        }
    }
}
