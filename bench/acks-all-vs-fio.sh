#!/usr/bin/env bash
# Single-node acks=all produce throughput next to the disk's physical limit, measured in
# the same run on the same filesystem:
#   1. fio: sequential writes with fdatasync after each write, at the size of one produce
#      request (records-per-batch x record size), one job — what one writer with one
#      fsync per request can reach;
#   2. strand bench: N producer connections, acks=all, against a fresh release broker whose
#      data dir is on that same filesystem (group commit shares fsyncs between producers).
# Usage: bench/acks-all-vs-fio.sh [DIR] (default: a new directory under /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-$(mktemp -d /var/tmp/strand-bench.XXXXXX)}
records=${RECORDS:-1000000}
record_size=${RECORD_SIZE:-1024}
per_batch=${RECORDS_PER_BATCH:-64}
producers_list=${PRODUCERS:-1 4 16}
port=${PORT:-19892}
write_kib=$(( (per_batch * (record_size + 10) + 61 + 1023) / 1024 ))

cargo build --release --quiet
mkdir -p "$dir/data"

bench/fio-limit.sh "$dir/fio" "$write_kib"

echo "== strand: acks=all, $records records of $record_size B, $per_batch per request, producers: $producers_list"
target/release/strand broker --listen "127.0.0.1:$port" --data-dir "$dir/data" --log-level warn &
broker=$!
trap 'kill $broker 2>/dev/null || true; wait $broker 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
for producers in $producers_list; do
    target/release/strand bench --broker "127.0.0.1:$port" --topic "bench-$producers" --records "$records" \
        --record-size-bytes "$record_size" --records-per-batch "$per_batch" --producers "$producers" \
        --partitions "$producers" --acks -1
done
