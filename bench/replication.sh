#!/usr/bin/env bash
# acks=all produce throughput and latency, single broker vs. a three-broker RF=3 cluster,
# with 1 and 100 partitions, next to the disk's fdatasync limit measured in the same run:
#   1. fio: sequential writes of one request's size, fdatasync after each, one job;
#   2. one broker (a cluster of one voter): strand bench, 1 and 100 partitions;
#   3. `strand dev cluster --brokers 3` on loopback (every partition RF=3; the three
#      brokers share this machine's cores and disk): strand bench, 1 and 100 partitions.
# Usage: bench/replication.sh [DIR] (default: a new directory under /var/tmp)
# Environment: RECORDS (default 300000), RECORD_SIZE (1024), RECORDS_PER_BATCH (64),
#              PRODUCERS (4), PARTITIONS ("1 100").
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_init strand-bench-repl.XXXXXX "${1:-}"
partitions_list=${PARTITIONS:-1 100}
single_port=19792
cluster_port=19892
write_kib=$(( (per_batch * (record_size + 10) + 61 + 1023) / 1024 ))

bench() { # bench PORT LABEL
    for partitions in $partitions_list; do
        echo "-- $2, $partitions partition(s)"
        target/release/strand bench --broker "127.0.0.1:$1" --topic "bench-$partitions" \
            --records "$records" --record-size-bytes "$record_size" \
            --records-per-batch "$per_batch" --producers "$producers" \
            --partitions "$partitions" --acks -1
    done
}

bench/fio-limit.sh "$dir/fio" "$write_kib"

echo "== one broker: acks=all, $records records of $record_size B, $per_batch per request, $producers producers"
target/release/strand broker --listen "127.0.0.1:$single_port" --data-dir "$dir/single" --log-level warn &
pids+=($!)
wait_port "$single_port"
sleep 1
bench "$single_port" "one broker"
kill "${pids[0]}"; wait "${pids[0]}" || true
pids=()

echo "== three brokers, RF=3: same load"
target/release/strand dev cluster --brokers 3 --base-port "$cluster_port" \
    --data-dir "$dir/cluster" --log-level warn &
pids+=($!)
for i in 0 1 2; do wait_port $((cluster_port + i)); done
sleep 2
bench "$cluster_port" "three brokers, RF=3"
