# Shared by the bench scripts (sourced, from the repository root): the load settings from
# the environment, the broker processes to stop and the data directory to remove on exit,
# and waiting for a port to listen.
#   bench_init DIR_TEMPLATE [DIR]: sets $dir (DIR, or a new directory from the
#     template under /var/tmp) and the load settings, builds the release binary, and
#     installs the exit trap that stops every pid in $pids and removes $dir.
records=${RECORDS:-300000}
record_size=${RECORD_SIZE:-1024}
per_batch=${RECORDS_PER_BATCH:-64}
producers=${PRODUCERS:-4}
pids=()

bench_init() {
    dir=${2:-$(mktemp -d "/var/tmp/$1")}
    cargo build --release --quiet
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}

wait_port() {
    for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2; return 1
}
