#!/usr/bin/env bash
# The disk's limit for one writer that fsyncs every write: fio, sequential writes of
# KIB KiB with fdatasync after each, one job, 20 s, in DIR (created, then removed).
# Prints one line: write MB/s, writes/s, fdatasync latency p50/p99.
# Usage: bench/fio-limit.sh DIR KIB
set -euo pipefail
dir=$1
kib=$2
command -v fio >/dev/null || { echo "fio is needed: apt-get install -y fio" >&2; exit 1; }
mkdir -p "$dir"
echo "== fio: ${kib} KiB sequential writes, fdatasync after each, 20 s"
fio --name=seqsync --directory="$dir" --rw=write --bs="${kib}k" --size=1g \
    --fdatasync=1 --runtime=20 --time_based --ioengine=psync --numjobs=1 --group_reporting \
    --output-format=json > "$dir.json"
python3 - "$dir.json" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
w, sync = job["write"], job["sync"]["lat_ns"]["percentile"]
print(f"fio write_MB_per_s={w['bw_bytes'] / 1e6:.1f} writes_per_s={w['iops']:.0f} "
      f"fdatasync_us_p50={sync['50.000000'] / 1e3:.0f} fdatasync_us_p99={sync['99.000000'] / 1e3:.0f}")
PY
rm -rf "$dir" "$dir.json"
