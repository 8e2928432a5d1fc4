//! `config`: the broker's TOML config file and topic config values.
//!
//! Input layout: `[mode: u8][UTF-8 text (lossy)...]`
//! - mode even: the text is a broker config file for
//!   `BrokerConfig::build(Some(text), &Overrides::default())`;
//! - mode odd: the text is topic config overrides, one `name=value` per line (split at
//!   the first '='), for `validate_topic_config` / `effective_config` / `describe`.
//!
//! Asserts: never panics; a broker config that is accepted round-trips (rendered back to
//! TOML, every setting spelled out, it builds to the same config); every value a topic
//! config accepts is known, is reflected by `describe` after `effective_config` (same
//! number or same word), describes to a value that is accepted again and gives the same
//! config; a set of overrides is accepted as a whole exactly when each one is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use strand::config::{BrokerConfig, Overrides};
use strand::log::config::{
    describe, effective_config, validate_topic_config, LogConfig, TOPIC_CONFIG_KEYS,
};

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Every setting of `c` as a config file.
fn render(c: &BrokerConfig) -> String {
    let mut out = String::new();
    out += &format!("node-id = {}\n", c.node_id);
    out += &format!("listen = {}\n", quote(&c.listen.to_string()));
    out += &format!(
        "advertised-listener = {}\n",
        quote(&format!("{}:{}", c.advertised_host, c.advertised_port))
    );
    out += &format!(
        "data-dir = {}\n",
        quote(c.data_dir.to_str().expect("data dir came from TOML text"))
    );
    out += &format!("log-level = {}\n", quote(&c.log_level));
    out += &format!("auto-create-topics-enable = {}\n", c.auto_create_topics);
    out += &format!("num-partitions = {}\n", c.default_partitions);
    out += &format!(
        "socket-request-max-bytes = {}\n",
        c.socket_request_max_bytes
    );
    out += &format!(
        "max-in-flight-requests-per-connection = {}\n",
        c.max_in_flight_requests_per_connection
    );
    out += &format!("max-connections = {}\n", c.max_connections);
    out += &format!(
        "retention-check-interval-ms = {}\n",
        c.retention_check_interval_ms
    );
    out += &format!(
        "recovery-checkpoint-interval-ms = {}\n",
        c.recovery_checkpoint_interval_ms
    );
    // The cluster settings (the replication issue added them after this renderer was
    // written; a round trip dropped them until the fuzzer noticed).
    if !c.peers.is_empty() {
        let peers: Vec<String> = c
            .peers
            .iter()
            .map(|(id, address)| format!("{id}@{address}"))
            .collect();
        out += &format!("peers = {}\n", quote(&peers.join(",")));
    }
    if let Some(address) = c.raft_listen {
        out += &format!("raft-listen = {}\n", quote(&address.to_string()));
    }
    out += &format!(
        "default-replication-factor = {}\n",
        c.default_replication_factor
    );
    out += &format!("raft-tick-ms = {}\n", c.raft_tick_ms);
    out += &format!("log-cleaner-backoff-ms = {}\n", c.log_cleaner_backoff_ms);
    out += &format!(
        "log-cleaner-dedupe-buffer-size = {}\n",
        c.log_cleaner_dedupe_buffer_bytes
    );
    out += &format!(
        "broker-session-timeout-ms = {}\n",
        c.broker_session_timeout_ms
    );
    out += "[topic-defaults]\n";
    for key in TOPIC_CONFIG_KEYS {
        let value = describe(&c.log_defaults, key.name).expect("every known key describes");
        out += &format!("{} = {}\n", quote(key.name), quote(&value));
    }
    out
}

fn check_broker(text: &str) {
    let Ok(config) = BrokerConfig::build(Some(text), &Overrides::default()) else {
        return;
    };
    assert!(config.node_id >= 0);
    assert!((1..=10_000).contains(&config.default_partitions));
    assert!(config.socket_request_max_bytes > 0);
    assert!(config.max_in_flight_requests_per_connection > 0);
    assert!(config.max_connections > 0);
    assert!(config.retention_check_interval_ms > 0);
    assert!(config.recovery_checkpoint_interval_ms > 0);
    assert!(
        !config.advertised_host.is_empty(),
        "accepted an empty advertised host"
    );
    assert!((0..=65535).contains(&config.advertised_port));
    let rendered = render(&config);
    let again = BrokerConfig::build(Some(&rendered), &Overrides::default())
        .unwrap_or_else(|e| panic!("an accepted config does not build again: {e}\n{rendered}"));
    assert_eq!(
        format!("{config:?}"),
        format!("{again:?}"),
        "the config changed on a round trip through TOML:\n{rendered}"
    );
}

fn is_number_key(name: &str) -> bool {
    matches!(
        name,
        "segment.bytes"
            | "segment.ms"
            | "retention.ms"
            | "retention.bytes"
            | "index.interval.bytes"
            | "max.message.bytes"
            | "min.insync.replicas"
            | "delete.retention.ms"
            | "min.compaction.lag.ms"
            | "max.compaction.lag.ms"
    )
}

/// Configs whose value has more than one spelling (a list in any order with spaces, a
/// decimal): described in one canonical form, checked by the round trip below.
fn is_canonicalised_key(name: &str) -> bool {
    matches!(name, "cleanup.policy" | "min.cleanable.dirty.ratio")
}

fn check_topic(text: &str) {
    let defaults = LogConfig::default();
    let mut overrides = BTreeMap::new();
    for line in text.lines().take(16) {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let accepted = validate_topic_config(name, value).is_ok();
        if accepted {
            assert!(
                TOPIC_CONFIG_KEYS.iter().any(|k| k.name == name),
                "unknown key {name:?} accepted"
            );
            let one = BTreeMap::from([(name.to_string(), value.to_string())]);
            let config = effective_config(&defaults, &one)
                .unwrap_or_else(|e| panic!("validated but not applied: {e}"));
            let shown = describe(&config, name).expect("a known key describes");
            if is_number_key(name) {
                assert_eq!(
                    value.trim().parse::<i64>().ok(),
                    shown.parse::<i64>().ok(),
                    "{name}={value:?} is described as {shown:?}"
                );
            } else if !is_canonicalised_key(name) {
                assert_eq!(value, shown, "{name}={value:?} is described as {shown:?}");
            }
            validate_topic_config(name, &shown)
                .unwrap_or_else(|e| panic!("describe gave a value that is refused: {e}"));
            let again = BTreeMap::from([(name.to_string(), shown.clone())]);
            assert_eq!(
                effective_config(&defaults, &again).unwrap(),
                config,
                "{name}: describe does not round-trip"
            );
        }
        overrides.insert(name.to_string(), value.to_string());
    }
    let all_valid = overrides
        .iter()
        .all(|(n, v)| validate_topic_config(n, v).is_ok());
    let applied = effective_config(&defaults, &overrides);
    assert_eq!(
        all_valid,
        applied.is_ok(),
        "validation and application disagree"
    );
    if let Ok(config) = applied {
        for key in TOPIC_CONFIG_KEYS {
            let shown = describe(&config, key.name).unwrap();
            validate_topic_config(key.name, &shown)
                .unwrap_or_else(|e| panic!("an effective config describes a refused value: {e}"));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if mode % 2 == 0 {
        check_broker(&text);
    } else {
        check_topic(&text);
    }
});
