#!/usr/bin/env bash
# The cost of idempotence and of transactions against plain acks=all produce:
#   one broker, then `strand dev cluster --brokers 3` (RF=3) on loopback; on each, the same
#   load as plain acks=all producers, as idempotent producers, and as transactional
#   producers committing every TXN_BATCHES requests (each mode on a fresh topic).
# Usage: bench/exactly-once.sh [DIR] (default: a new directory under /var/tmp)
# Environment: RECORDS (default 300000), RECORD_SIZE (1024), RECORDS_PER_BATCH (64),
#              PRODUCERS (4), PARTITIONS (4), TXN_BATCHES ("10 1"), CLUSTER (1: also 3 brokers).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
bench_init strand-bench-eos.XXXXXX "${1:-}"
partitions=${PARTITIONS:-4}
txn_batches_list=${TXN_BATCHES:-10 1}
single_port=19992
cluster_port=20092

run() { # run PORT TOPIC LABEL [EXTRA BENCH FLAGS...]
    local port=$1 topic=$2 label=$3
    shift 3
    echo "-- $label"
    target/release/strand bench --broker "127.0.0.1:$port" --topic "$topic" \
        --records "$records" --record-size-bytes "$record_size" \
        --records-per-batch "$per_batch" --producers "$producers" \
        --partitions "$partitions" --acks -1 "$@"
}
modes() { # modes PORT
    run "$1" plain "plain acks=all"
    run "$1" idempotent "idempotent" --idempotent
    for n in $txn_batches_list; do
        run "$1" "txn-$n" "transactional, commit every $n request(s)" --transaction-batches "$n"
    done
}

echo "== one broker: $records records of $record_size B, $per_batch per request, $producers producers, $partitions partitions"
target/release/strand broker --listen "127.0.0.1:$single_port" --data-dir "$dir/single" --log-level warn &
pids+=($!)
wait_port "$single_port"
sleep 1
modes "$single_port"
kill "${pids[0]}"; wait "${pids[0]}" || true
pids=()

if [ "${CLUSTER:-1}" = 1 ]; then
    echo "== three brokers, RF=3: same load"
    target/release/strand dev cluster --brokers 3 --base-port "$cluster_port" \
        --data-dir "$dir/cluster" --log-level warn &
    pids+=($!)
    for i in 0 1 2; do wait_port $((cluster_port + i)); done
    sleep 2
    modes "$cluster_port"
fi
