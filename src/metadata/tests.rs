//! The controller and the image together: what a 3-broker metadata quorum would do,
//! with records passed through their prost encoding as the log would store them.

use super::records::*;
use super::*;
use kafka_protocol::ResponseError;
use prost::Message;
use std::collections::BTreeMap;

const SESSION_MS: i64 = 10_000;

struct Cluster {
    image: MetadataImage,
    controller: Controller,
    offset: i64,
}

impl Cluster {
    fn new(brokers: &[i32]) -> Cluster {
        let config = ControllerConfig {
            session_timeout_ms: SESSION_MS,
            default_partitions: 1,
            default_replication_factor: 3,
        };
        let image = MetadataImage::new();
        let controller = Controller::new(config, &image, 0);
        let mut cluster = Cluster {
            image,
            controller,
            offset: 0,
        };
        for &id in brokers {
            let registration = RegisterBroker {
                node_id: id,
                host: "127.0.0.1".into(),
                port: 9000 + id,
                rack: None,
                incarnation_id: id as u64,
                directory_id: 0,
            };
            let record = cluster.controller.register_broker(registration, 0);
            cluster.commit(record);
            let unfence = cluster
                .controller
                .heartbeat(&cluster.image, id, 0)
                .unwrap()
                .expect("a new broker starts fenced");
            cluster.commit(unfence);
        }
        cluster
    }

    /// Encodes the record as the log stores it, decodes it back, applies it.
    fn commit(&mut self, record: MetadataRecord) {
        self.try_commit(record).unwrap();
    }

    fn try_commit(&mut self, record: MetadataRecord) -> Result<(), ApplyError> {
        let bytes = record.encode_to_vec();
        let decoded = MetadataRecord::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, record);
        self.offset += 1;
        self.image.apply(self.offset, &decoded)
    }

    fn create(&mut self, name: &str, partitions: i32, factor: i16) -> Result<(), ApiError> {
        let request = CreateTopic {
            name: name.into(),
            partitions: Some(partitions),
            replication_factor: Some(factor),
            ..Default::default()
        };
        let id = uuid::Uuid::from_u128(self.offset as u128 + 1);
        let record = self.controller.create_topic(
            &self.image,
            &request,
            id,
            PlacementSeed {
                start_index: 1,
                shift: 2,
            },
        )?;
        self.commit(record);
        Ok(())
    }
}

use crate::error::ApiError;

#[test]
fn topics_spread_replicas_and_leaders_over_the_brokers() {
    let mut c = Cluster::new(&[1, 2, 3]);
    assert_eq!(c.image.live_brokers(), vec![1, 2, 3]);
    c.create("orders", 6, 3).unwrap();
    let topic = &c.image.topics["orders"];
    let mut leads = BTreeMap::new();
    for p in &topic.partitions {
        assert_eq!(p.replicas.len(), 3);
        assert_eq!(p.leader, p.replicas[0]);
        assert_eq!(p.isr, p.replicas);
        *leads.entry(p.leader).or_insert(0) += 1;
    }
    assert_eq!(leads, BTreeMap::from([(1, 2), (2, 2), (3, 2)]));
    assert_eq!(
        c.create("orders", 1, 1).unwrap_err().code,
        ResponseError::TopicAlreadyExists
    );
    assert_eq!(
        c.create("big", 1, 4).unwrap_err().code,
        ResponseError::InvalidReplicationFactor
    );
    assert_eq!(
        c.create("bad name", 1, 1).unwrap_err().code,
        ResponseError::InvalidTopicException
    );
    assert_eq!(
        c.create("orders_", 0, 1).unwrap_err().code,
        ResponseError::InvalidPartitions
    );
}

#[test]
fn partitions_configs_and_deletion() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.create("t", 2, 2).unwrap();
    let record = c
        .controller
        .create_partitions(&c.image, "t", 5, PlacementSeed::default())
        .unwrap();
    c.commit(record);
    assert_eq!(c.image.topics["t"].partitions.len(), 5);
    assert!(c.image.topics["t"]
        .partitions
        .iter()
        .all(|p| p.replicas.len() == 2));
    assert_eq!(
        c.controller
            .create_partitions(&c.image, "t", 5, PlacementSeed::default())
            .unwrap_err()
            .code,
        ResponseError::InvalidPartitions
    );
    let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
    let record = c
        .controller
        .set_topic_configs(&c.image, "t", configs.clone())
        .unwrap();
    c.commit(record);
    assert_eq!(c.image.topics["t"].configs, configs);
    let bad = BTreeMap::from([("retention.ms".to_string(), "soon".to_string())]);
    assert_eq!(
        c.controller
            .set_topic_configs(&c.image, "t", bad)
            .unwrap_err()
            .code,
        ResponseError::InvalidConfig
    );
    let record = c.controller.delete_topic(&c.image, "t").unwrap();
    c.commit(record);
    assert!(c.image.topics.is_empty());
    assert_eq!(
        c.controller.delete_topic(&c.image, "t").unwrap_err().code,
        ResponseError::UnknownTopicOrPartition
    );
}

#[test]
fn silent_brokers_are_fenced_and_come_back_with_a_heartbeat() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.controller.heartbeat(&c.image, 1, SESSION_MS).unwrap();
    c.controller.heartbeat(&c.image, 3, SESSION_MS).unwrap();
    assert!(c
        .controller
        .expire_sessions(&c.image, SESSION_MS)
        .is_empty());
    let fenced = c.controller.expire_sessions(&c.image, SESSION_MS + 1);
    assert_eq!(
        fenced,
        vec![MetadataRecord::new(Record::FenceBroker(BrokerRef {
            node_id: 2
        }))]
    );
    for record in fenced {
        c.commit(record);
    }
    assert_eq!(c.image.live_brokers(), vec![1, 3]);
    // New topics avoid the fenced broker; three replicas no longer fit.
    assert_eq!(
        c.create("t3", 1, 3).unwrap_err().code,
        ResponseError::InvalidReplicationFactor
    );
    c.create("t2", 4, 2).unwrap();
    assert!(c.image.topics["t2"]
        .partitions
        .iter()
        .all(|p| !p.replicas.contains(&2)));
    let unfence = c
        .controller
        .heartbeat(&c.image, 2, SESSION_MS + 2)
        .unwrap()
        .unwrap();
    c.commit(unfence);
    assert_eq!(c.image.live_brokers(), vec![1, 2, 3]);
    assert_eq!(
        c.controller.heartbeat(&c.image, 9, 0).unwrap_err().code,
        ResponseError::BrokerIdNotRegistered
    );
}

#[test]
fn elected_leaders_are_recorded_once_and_rebalanced_to_the_preferred_replica() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.create("t", 1, 3).unwrap();
    let p = c.image.partition("t", 0).unwrap().clone();
    let (preferred, other) = (p.replicas[0], p.replicas[1]);
    assert!(c.controller.rebalance_leaders(&c.image, 10).is_empty());
    // The Raft group elects another replica in a later term.
    let change = c
        .controller
        .leader_elected(&c.image, "t", 0, other, 3, p.replicas.clone())
        .unwrap();
    c.commit(change);
    assert_eq!(
        (
            c.image.partition("t", 0).unwrap().leader,
            c.image.partition("t", 0).unwrap().leader_epoch
        ),
        (other, 3)
    );
    // Old news and strangers are ignored.
    assert!(c
        .controller
        .leader_elected(&c.image, "t", 0, preferred, 2, p.replicas.clone())
        .is_none());
    assert!(c
        .controller
        .leader_elected(&c.image, "t", 0, other, 3, p.replicas.clone())
        .is_none());
    assert!(c
        .controller
        .leader_elected(&c.image, "t", 0, 42, 9, p.replicas.clone())
        .is_none());
    assert!(c
        .controller
        .leader_elected(&c.image, "t", 7, other, 9, p.replicas.clone())
        .is_none());
    assert_eq!(
        c.controller.rebalance_leaders(&c.image, 10),
        vec![Effect::TransferLeader {
            topic: "t".into(),
            partition: 0,
            to: preferred
        }]
    );
    assert!(c.controller.rebalance_leaders(&c.image, 0).is_empty());
    // A preferred replica that is out of sync is left alone.
    let shrunk: Vec<i32> = p
        .replicas
        .iter()
        .copied()
        .filter(|b| *b != preferred)
        .collect();
    let change = c
        .controller
        .leader_elected(&c.image, "t", 0, other, 3, shrunk)
        .unwrap();
    c.commit(change);
    assert!(c.controller.rebalance_leaders(&c.image, 10).is_empty());
}

#[test]
fn records_that_do_not_fit_change_nothing() {
    let mut c = Cluster::new(&[1, 2]);
    c.create("t", 1, 2).unwrap();
    let before = c.image.clone();
    let stale = MetadataRecord::new(Record::PartitionChange(PartitionChange {
        topic: "t".into(),
        partition: 0,
        leader: 1,
        leader_epoch: -1,
        isr: vec![1],
    }));
    assert!(matches!(c.try_commit(stale), Err(ApplyError::Invalid(_))));
    let stranger = MetadataRecord::new(Record::PartitionChange(PartitionChange {
        topic: "t".into(),
        partition: 0,
        leader: 1,
        leader_epoch: 5,
        isr: vec![1, 7],
    }));
    assert!(matches!(
        c.try_commit(stranger),
        Err(ApplyError::Invalid(_))
    ));
    assert!(matches!(
        c.try_commit(MetadataRecord::default()),
        Err(ApplyError::Empty)
    ));
    let duplicate = TopicRecord {
        name: "t".into(),
        topic_id: vec![0; 16],
        partitions: vec![],
        configs: BTreeMap::new(),
    };
    assert!(matches!(
        c.try_commit(MetadataRecord::new(Record::CreateTopic(duplicate))),
        Err(ApplyError::TopicExists(_))
    ));
    assert_eq!(c.image.topics, before.topics);
    assert_eq!(c.image.brokers, before.brokers);
}

/// The image knows when each partition was placed and since when each broker's disk has
/// been in the cluster: a restart with the same directory id keeps the date, a new disk
/// (wiped or replaced) starts a new one. A broker uses the two to tell a replica that
/// never held anything from one its old disk held.
#[test]
fn placements_and_disks_are_dated() {
    let mut image = MetadataImage::new();
    let register = |node_id: i32, incarnation_id: u64, directory_id: u64| {
        MetadataRecord::new(Record::RegisterBroker(RegisterBroker {
            node_id,
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
            incarnation_id,
            directory_id,
        }))
    };
    for (offset, id) in [(0, 1), (1, 2), (2, 3)] {
        image
            .apply(offset, &register(id, 10, 100 + id as u64))
            .unwrap();
    }
    let partition = || PartitionRecord {
        replicas: vec![1, 2, 3],
        isr: vec![1, 2, 3],
        leader: -1,
        leader_epoch: 0,
    };
    let topic = MetadataRecord::new(Record::CreateTopic(TopicRecord {
        name: "t".into(),
        topic_id: vec![7; 16],
        partitions: vec![partition(), partition()],
        configs: BTreeMap::new(),
    }));
    image.apply(5, &topic).unwrap();
    let more = MetadataRecord::new(Record::AddPartitions(AddPartitions {
        topic: "t".into(),
        partitions: vec![partition()],
    }));
    image.apply(8, &more).unwrap();
    assert_eq!(image.topics["t"].placed_at, vec![5, 5, 8]);
    // Broker 2 restarts on the same disk, twice (a retried registration too).
    image.apply(9, &register(2, 11, 102)).unwrap();
    image.apply(10, &register(2, 11, 102)).unwrap();
    assert_eq!(image.brokers[&2].directory_since, 1);
    // Broker 3 comes back on a new disk.
    image.apply(11, &register(3, 12, 999)).unwrap();
    assert_eq!(
        (
            image.brokers[&3].directory_id,
            image.brokers[&3].directory_since
        ),
        (999, 11)
    );
    // A broker that does not name its disk never keeps an old date.
    image.apply(12, &register(1, 13, 0)).unwrap();
    image.apply(13, &register(1, 14, 0)).unwrap();
    assert_eq!(image.brokers[&1].directory_since, 13);
}

/// An admin change is checked against one broker's image and may commit late, or twice
/// (the broker proposes it again while it waits; a proposal thought lost with a leader
/// change can still commit). It applies only if what it depends on did not change after
/// the image it was checked against: applied anyway, added partitions were added twice,
/// and a creation brought a deleted topic back (found by the simulator, seed 110510).
#[test]
fn a_stale_admin_change_is_refused() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let request = CreateTopic {
        name: "t".into(),
        partitions: Some(1),
        replication_factor: Some(3),
        ..Default::default()
    };
    let checked_at = c.image.last_applied_offset;
    let create = c
        .controller
        .create_topic(
            &c.image,
            &request,
            uuid::Uuid::from_u128(7),
            PlacementSeed::default(),
        )
        .unwrap()
        .based_on(checked_at);
    c.commit(create.clone());
    let grow = c
        .controller
        .create_partitions(&c.image, "t", 3, PlacementSeed::default())
        .unwrap()
        .based_on(c.image.last_applied_offset);
    let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
    let set = c
        .controller
        .set_topic_configs(&c.image, "t", configs.clone())
        .unwrap()
        .based_on(c.image.last_applied_offset);
    c.commit(grow.clone());
    assert!(
        matches!(c.try_commit(grow), Err(ApplyError::Stale(_))),
        "partitions added twice"
    );
    assert_eq!(c.image.topics["t"].partitions.len(), 3);
    // Partitions added since do not make a config change stale; a config change since does.
    c.commit(set.clone());
    assert_eq!(c.image.topics["t"].configs, configs);
    assert!(matches!(c.try_commit(set), Err(ApplyError::Stale(_))));
    let delete = c
        .controller
        .delete_topic(&c.image, "t")
        .unwrap()
        .based_on(c.image.last_applied_offset);
    c.commit(delete.clone());
    assert!(matches!(
        c.try_commit(create.clone()),
        Err(ApplyError::Stale(_))
    ));
    assert!(
        c.image.topics.is_empty(),
        "a late creation brought the topic back"
    );
    // A creation checked after the deletion applies; the late deletion then does not
    // delete the new topic.
    let recreate = c
        .controller
        .create_topic(
            &c.image,
            &request,
            uuid::Uuid::from_u128(8),
            PlacementSeed::default(),
        )
        .unwrap()
        .based_on(c.image.last_applied_offset);
    c.commit(recreate);
    assert!(matches!(c.try_commit(delete), Err(ApplyError::Stale(_))));
    assert_eq!(c.image.topics["t"].topic_id, uuid::Uuid::from_u128(8));
}

/// The image remembers `MAX_DELETED_NAMES` deletions; a creation checked against an
/// image older than the ones it forgot is refused, whatever its name.
#[test]
fn forgotten_deletions_make_old_creations_stale() {
    let mut c = Cluster::new(&[1]);
    let checked_at = c.image.last_applied_offset;
    let create = |c: &Cluster, name: &str| {
        let request = CreateTopic {
            name: name.into(),
            partitions: Some(1),
            replication_factor: Some(1),
            ..Default::default()
        };
        c.controller
            .create_topic(
                &c.image,
                &request,
                uuid::Uuid::from_u128(c.offset as u128 + 1),
                PlacementSeed::default(),
            )
            .unwrap()
    };
    let late = create(&c, "late").based_on(checked_at);
    for k in 0..=MetadataImage::MAX_DELETED_NAMES {
        let name = format!("t{k}");
        let record = create(&c, &name);
        c.commit(record);
        let delete = c.controller.delete_topic(&c.image, &name).unwrap();
        c.commit(delete);
    }
    assert!(matches!(c.try_commit(late), Err(ApplyError::Stale(_))));
    let fresh = create(&c, "fresh").based_on(c.image.last_applied_offset);
    c.commit(fresh);
    assert!(c.image.topics.contains_key("fresh"));
}

#[test]
fn producer_id_blocks_are_granted_once_and_never_overlap() {
    let mut cluster = Cluster::new(&[1, 2]);
    let block = |broker_id, first_producer_id, count| {
        MetadataRecord::new(Record::AllocateProducerIds(AllocateProducerIds {
            broker_id,
            incarnation_id: 7,
            first_producer_id,
            count,
        }))
    };
    cluster.commit(block(1, 0, 1000));
    // Broker 2 asked for the same start: too late, nothing changes.
    assert!(matches!(
        cluster.try_commit(block(2, 0, 1000)),
        Err(ApplyError::Stale(_))
    ));
    // The same record committing twice is refused the second time.
    assert!(cluster.try_commit(block(1, 0, 1000)).is_err());
    cluster.commit(block(2, 1000, 1000));
    assert_eq!(cluster.image.next_producer_id, 2000);
    assert_eq!(cluster.image.producer_id_blocks.get(&0), Some(&(1, 7)));
    assert_eq!(cluster.image.producer_id_blocks.get(&1000), Some(&(2, 7)));
    for bad in [
        block(1, 2000, 0),
        block(1, 2000, i64::MAX),
        block(9, 2000, 10),
    ] {
        assert!(cluster.try_commit(bad).is_err());
    }
    assert_eq!(cluster.image.next_producer_id, 2000);
    // Only the latest blocks are remembered.
    for k in 0..(MetadataImage::MAX_PRODUCER_ID_BLOCKS as i64 + 5) {
        cluster.commit(block(1, 2000 + k, 1));
    }
    assert_eq!(
        cluster.image.producer_id_blocks.len(),
        MetadataImage::MAX_PRODUCER_ID_BLOCKS
    );
}
