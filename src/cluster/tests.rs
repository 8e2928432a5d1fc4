//! Three cluster nodes on loopback (real TCP between them, in-memory disks): they form
//! the metadata quorum, register, create a replicated topic whose leaders follow
//! placement, and replicate produced batches to every replica at the same offsets.

use super::*;
use crate::client::encode_batch;
use crate::log::LogConfig;
use crate::metadata::CreateTopic;
use crate::replication::driver::DriverConfig;
use crate::storage::MemoryStorage;
use bytes::Bytes;
use kafka_protocol::records::Compression;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

async fn start_cluster() -> BTreeMap<u64, Arc<ClusterNode>> {
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<u64, std::net::SocketAddr> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().unwrap()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let config = ClusterConfig {
            node_id: id,
            peers: peers.clone(),
            data_dir: "/data".into(),
            log_defaults: LogConfig::default(),
            kafka_host: "127.0.0.1".into(),
            kafka_port: 9090 + id as i32,
            tick_ms: 10,
            driver: DriverConfig::default(),
            default_partitions: 1,
            default_replication_factor: 3,
            session_timeout_ms: 9_000,
            seed: id,
            recovery_points: Default::default(),
        };
        let node = ClusterNode::start(config, Arc::new(MemoryStorage::new()), Some(listener))
            .await
            .unwrap();
        nodes.insert(id, node);
    }
    nodes
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1_000 {
        if let Some(v) = check() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn batch(tag: &str) -> Bytes {
    let values: Vec<_> = (0..2)
        .map(|i| (None, Some(Bytes::from(format!("{tag}-{i}")))))
        .collect();
    encode_batch(&values, 1_000, Compression::None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_broker_cluster_replicates_a_topic() {
    let nodes = start_cluster().await;
    eventually("every broker registered everywhere", || {
        nodes
            .values()
            .all(|n| n.image().live_brokers() == vec![1, 2, 3])
            .then_some(())
    })
    .await;
    let request = CreateTopic {
        name: "orders".into(),
        partitions: Some(3),
        replication_factor: Some(3),
        ..Default::default()
    };
    nodes[&2].create_topic(request.clone()).await.unwrap();
    let again = nodes[&3].create_topic(request).await.unwrap_err();
    assert_eq!(
        again.code,
        kafka_protocol::ResponseError::TopicAlreadyExists
    );
    // Every partition ends up led by its preferred replica (the first election may go
    // elsewhere; the balancer transfers it back), recorded in every image.
    let leaders: Vec<i32> = eventually("preferred leaders recorded in every image", || {
        let views: BTreeSet<Vec<(i32, i32)>> = nodes
            .values()
            .map(|n| {
                n.image()
                    .topics
                    .get("orders")
                    .map(|t| {
                        t.partitions
                            .iter()
                            .map(|p| (p.leader, p.replicas[0]))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let [view] = &views.into_iter().collect::<Vec<_>>()[..] else {
            return None;
        };
        (view.len() == 3 && view.iter().all(|(leader, preferred)| leader == preferred))
            .then(|| view.iter().map(|(l, _)| *l).collect())
    })
    .await;
    // Replicas know their leader too.
    eventually("replicas know their leaders", || {
        (0..3)
            .all(|p| {
                nodes.values().all(|n| {
                    n.replica("orders", p).unwrap().leader().0 == leaders[p as usize] as u64
                })
            })
            .then_some(())
    })
    .await;
    assert_eq!(
        leaders.iter().collect::<BTreeSet<_>>().len(),
        3,
        "leaders spread over the brokers"
    );

    // Produce to each partition's leader; followers refuse and name the leader.
    for (partition, leader) in leaders.iter().enumerate() {
        let leader_node = &nodes[&(*leader as u64)];
        for i in 0..5 {
            let offset = leader_node
                .produce(
                    "orders",
                    partition as i32,
                    batch(&format!("p{partition}b{i}")),
                    Wait::Commit,
                )
                .await
                .unwrap();
            assert!(offset > 0, "the first leader's no-op takes offset 0");
        }
        let follower = nodes.keys().find(|id| **id != *leader as u64).unwrap();
        let refused = nodes[follower]
            .produce("orders", partition as i32, batch("x"), Wait::Commit)
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            ProduceError::NotLeader {
                leader: *leader as u64
            }
        );
    }
    // Every replica holds the same bytes at the same offsets up to the high watermark.
    for partition in 0..3 {
        let hw = eventually("replicas caught up", || {
            let hws: BTreeSet<i64> = nodes
                .values()
                .map(|n| n.replica("orders", partition).unwrap().high_watermark())
                .collect();
            (hws.len() == 1).then(|| *hws.iter().next().unwrap())
        })
        .await;
        // One no-op per leader term, then five batches of two records.
        assert!(hw >= 1 + 5 * 2, "high watermark {hw}");
        let read = |id: u64| {
            nodes[&id]
                .replica("orders", partition)
                .unwrap()
                .storage
                .lock()
                .log()
                .read(0, 1 << 20, hw, true)
                .unwrap()
        };
        assert_eq!(read(1), read(2));
        assert_eq!(read(2), read(3));
    }
    // acks=1 answers after the leader's own persist, at the offset the entry commits at.
    let leader = &nodes[&(leaders[0] as u64)];
    let hw = leader.replica("orders", 0).unwrap().high_watermark();
    let offset = leader
        .produce("orders", 0, batch("one"), Wait::LocalAppend)
        .await
        .unwrap();
    assert_eq!(offset, hw);
}

/// A committed metadata batch that rots on a voter's disk must not keep the broker from
/// starting (found by the simulator: the broker failed to start at every restart). The
/// log is cut at the damage, the image holds the records before it, and the lost commit
/// is remembered durably so the replica does not vote until it is caught up again. With
/// no other voter to repair from, starting fails instead.
#[test]
fn a_corrupt_committed_metadata_batch_cuts_the_log_at_start() {
    use crate::metadata::log_codec::encode_batch;
    use crate::metadata::records::{ClusterIdentity, MetadataRecord, Record};
    use crate::metadata::MetadataImage;
    use crate::replication::ReplicaLog;
    use crate::storage::read_to_vec;
    use std::path::Path;

    let storage = MemoryStorage::new();
    let dir = Path::new("/data/__cluster_metadata-0");
    // Three batches in a sealed segment, each indexed, opened past a clean stop (recovery
    // point at the log end): recovery rescans only from a sealed segment's last indexed
    // batch, so the replay is the first to read the middle one.
    let config = LogConfig {
        segment_bytes: 250,
        index_interval_bytes: 0,
        ..LogConfig::default()
    };
    let open = |storage: &MemoryStorage| {
        ReplicaLog::open(
            Arc::new(storage.clone()),
            dir,
            config.clone(),
            4,
            &[1, 2, 3],
        )
        .unwrap()
    };
    let mut replica = open(&storage);
    let batches: Vec<Bytes> = (0..4)
        .map(|i| {
            let identity = ClusterIdentity {
                cluster_id: format!("cluster-{i}"),
            };
            encode_batch(&[MetadataRecord::new(Record::ClusterIdentity(identity))], 0)
        })
        .collect();
    let entries: Vec<raft::eraftpb::Entry> = batches
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let mut entry = raft::eraftpb::Entry::default();
            entry.index = i as u64 + 1;
            entry.term = 1;
            entry.data = data.clone();
            entry
        })
        .collect();
    replica.append(&entries, 0).unwrap();
    let mut hard_state = replica.hard_state().clone();
    hard_state.term = 1;
    hard_state.commit = 4;
    replica.set_hard_state(hard_state);
    replica.write_state().unwrap();
    let (handles, up_to) = replica.log_sync_handles().unwrap();
    handles.iter().for_each(|h| h.sync().unwrap());
    replica.flushed(up_to);
    replica.state_sync_handle().unwrap().sync().unwrap();
    drop(replica);

    // Rot the second batch (inside its CRC-covered records).
    let stored = {
        let replica = open(&storage);
        let position = replica.position(2).unwrap();
        replica.log().read_batch(position.base_offset).unwrap()
    };
    let path = dir.join("00000000000000000000.log");
    let data = read_to_vec(&storage, &path).unwrap();
    let at = data
        .windows(stored.len())
        .position(|w| w == &stored[..])
        .unwrap();
    assert!(storage.corrupt(&path, at + stored.len() - 10, &[0x55]));

    // A single voter cannot repair it: it does not start.
    let mut alone = open(&storage);
    assert!(replay_committed(&mut alone, &mut MetadataImage::new(), false).is_err());
    drop(alone);

    let mut replica = open(&storage);
    let mut image = MetadataImage::new();
    replay_committed(&mut replica, &mut image, true).unwrap();
    assert_eq!(replica.last_index(), 1, "cut at the corrupt entry");
    assert_eq!(replica.lost_commit(), Some(4));
    assert_eq!(
        image.last_applied_offset, 0,
        "the record before the damage is applied"
    );
    drop(replica);
    assert_eq!(
        open(&storage).vote_barrier().map(|b| b.index),
        Some(4),
        "the lost commit is not durable"
    );
}

/// A disk keeps its directory id across restarts; a wiped disk (or a damaged file) gets
/// a new one, which is how the cluster tells its replicas from the old disk's.
#[test]
fn a_disk_keeps_its_directory_id_and_a_new_disk_gets_another() {
    use rand::SeedableRng;
    let storage = MemoryStorage::new();
    let data_dir = std::path::Path::new("/data");
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let first = directory_id(&storage, data_dir, &mut rng).unwrap();
    assert_ne!(first, 0);
    storage.crash();
    let mut other_rng = rand::rngs::StdRng::seed_from_u64(2);
    assert_eq!(
        directory_id(&storage, data_dir, &mut other_rng).unwrap(),
        first,
        "the id did not survive a power loss"
    );
    let wiped = MemoryStorage::new();
    let second = directory_id(&wiped, data_dir, &mut other_rng).unwrap();
    assert_ne!(second, first);
    let path = data_dir.join(DIRECTORY_ID_FILE);
    crate::storage::write_atomic(&wiped, &path, b"directory.id = x\n").unwrap();
    let third = directory_id(&wiped, data_dir, &mut other_rng).unwrap();
    assert!(third != second && third != 0);
    assert_eq!(
        directory_id(&wiped, data_dir, &mut other_rng).unwrap(),
        third
    );
}
