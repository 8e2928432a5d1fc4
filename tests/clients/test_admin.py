"""Topic administration with confluent-kafka's AdminClient and kafka-python's
KafkaAdminClient: create (with configs), list, describe/alter configs, add partitions,
delete, and the errors for an existing topic and a replication factor above 1."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewPartitions, NewTopic, ResourceType)

T = 30  # seconds for any single admin call


def wait_for(predicate, what, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def kafka_error_code(future):
    with pytest.raises(KafkaException) as info:
        future.result(timeout=T)
    return info.value.args[0].code()


def describe(admin, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)


def partition_dirs(broker, topic):
    return sorted(p.name for p in broker.data_dir.iterdir()
                  if p.is_dir() and p.name.rsplit("-", 1)[0] == topic)


def test_confluent_admin_topic_lifecycle(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = "adm"

    fs = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1,
                                       config={"retention.ms": "123456"})],
                             operation_timeout=T, request_timeout=T)
    assert fs[topic].result(timeout=T) is None

    md = admin.list_topics(timeout=T)
    assert topic in md.topics
    assert md.topics[topic].error is None
    assert sorted(md.topics[topic].partitions) == [0, 1, 2]
    for p in md.topics[topic].partitions.values():
        assert (p.leader, p.replicas, p.isrs) == (1, [1], [1])
    assert partition_dirs(broker, topic) == ["adm-0", "adm-1", "adm-2"]

    configs = describe(admin, topic)
    assert configs["retention.ms"].value == "123456"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["segment.bytes"].value == str(1 << 30)
    assert configs["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value

    # Non-incremental AlterConfigs replaces the whole set of overrides.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.ms": "234567"})
    assert admin.alter_configs([res], request_timeout=T)[res].result(timeout=T) is None
    configs = describe(admin, topic)
    assert configs["retention.ms"].value == "234567"

    # Incremental: SET one key, keep the other; then DELETE back to the default.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)])
    assert admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T) is None
    configs = describe(admin, topic)
    assert configs["segment.bytes"].value == "1048576"
    assert configs["segment.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "234567"

    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    assert admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T) is None
    configs = describe(admin, topic)
    assert configs["retention.ms"].value == str(7 * 24 * 3600 * 1000)
    assert configs["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["segment.bytes"].value == "1048576"

    fs = admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=T,
                                 request_timeout=T)
    assert fs[topic].result(timeout=T) is None
    md = admin.list_topics(topic=topic, timeout=T)
    assert sorted(md.topics[topic].partitions) == [0, 1, 2, 3, 4]
    assert partition_dirs(broker, topic) == [f"adm-{i}" for i in range(5)]

    # Errors: an existing topic, and more replicas than brokers.
    fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)],
                             operation_timeout=T, request_timeout=T)
    assert kafka_error_code(fs[topic]) == KafkaError.TOPIC_ALREADY_EXISTS
    fs = admin.create_topics([NewTopic("adm-rf3", num_partitions=1, replication_factor=3)],
                             operation_timeout=T, request_timeout=T)
    assert kafka_error_code(fs["adm-rf3"]) == KafkaError.INVALID_REPLICATION_FACTOR
    assert "adm-rf3" not in admin.list_topics(timeout=T).topics

    fs = admin.delete_topics([topic], operation_timeout=T, request_timeout=T)
    assert fs[topic].result(timeout=T) is None
    assert topic not in admin.list_topics(timeout=T).topics
    wait_for(lambda: partition_dirs(broker, topic) == [], "partition directories to go")
    fs = admin.delete_topics([topic], operation_timeout=T, request_timeout=T)
    assert kafka_error_code(fs[topic]) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_kafka_python_admin_create_delete(broker):
    from kafka.admin import ConfigResource as KConfigResource, ConfigResourceType, KafkaAdminClient
    from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=T * 1000)
    try:
        topic = "kpadm"
        admin.create_topics({topic: {"num_partitions": 2, "replication_factor": 1,
                                     "configs": {"retention.ms": "3600000"}}})
        assert topic in admin.list_topics()
        [desc] = admin.describe_topics([topic])
        assert desc["name"] == topic and desc["error_code"] == 0
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1]
        assert partition_dirs(broker, topic) == ["kpadm-0", "kpadm-1"]

        described = admin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)])
        modified = described["topic"][topic]
        assert set(modified) == {"retention.ms"}, modified
        assert modified["retention.ms"]["value"] == "3600000"

        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 1}})
        with pytest.raises(InvalidReplicationFactorError):
            admin.create_topics({"kpadm-rf3": {"num_partitions": 1, "replication_factor": 3}})
        assert "kpadm-rf3" not in admin.list_topics()

        admin.delete_topics([topic])
        assert topic not in admin.list_topics()
        wait_for(lambda: partition_dirs(broker, topic) == [], "partition directories to go")
    finally:
        admin.close()
