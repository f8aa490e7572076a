#!/usr/bin/env bash
# Runs every benchmark in BENCHMARKS.md, in about 15 minutes on a 2-core machine, and prints the
# figures. Installs wrk and valgrind from the distribution's packages if they are missing.
#   bash bench/run.sh            # everything
#   ROUNDS=3 SECONDS_PER_RUN=3 bash bench/run.sh   # quicker, noisier
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}

if ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q && apt-get install -y -q wrk valgrind
fi

echo "== 1. per request, in process (criterion), and the unavoidable steps alone"
timeout 900 cargo bench --bench per_request --features analytics -- --warm-up-time 2 --measurement-time 5
timeout 300 cargo bench --bench steps -- --warm-up-time 1 --measurement-time 2
echo "== 2. miss path (criterion)"
timeout 600 cargo bench --bench miss_path -- --warm-up-time 1 --measurement-time 5
echo "== 3. memory per cached key"
timeout 600 cargo bench --bench memory
echo "== the console's key list, SQLite with 100,000 keys (BENCHMARKS.md's top section)"
timeout 300 cargo bench --bench listing -- --warm-up-time 1 --measurement-time 5
echo "== the same on Redis (a private server on 127.0.0.1, started by .ci/services.sh)"
(
  source .ci/services.sh >/dev/null
  timeout 600 cargo bench --bench listing_redis --features redis -- --warm-up-time 1 --measurement-time 5
)

cargo build -q --release --example bench_server --example bench_driver

echo "== 4. end to end: axum on 127.0.0.1, wrk from a second process, $ROUNDS interleaved rounds"
python3 - "$ROUNDS" "$SECONDS_PER_RUN" <<'PY'
import re, statistics, subprocess, sys, time
rounds, seconds = int(sys.argv[1]), int(sys.argv[2])
results = {"bare": [], "layer": [], "bearer": []}
for r in range(rounds):
    for i, mode in enumerate(results):
        port = 3100 + i
        server = subprocess.Popen(["./target/release/examples/bench_server", mode, str(port)],
                                  stdout=subprocess.PIPE, text=True)
        header = server.stdout.readline().strip()
        time.sleep(0.3)
        out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-H", header,
                              f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=seconds + 30).stdout
        server.kill(); server.wait()
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        if "Non-2xx" in out:
            sys.exit(f"{mode}: non-2xx responses:\n{out}")
        results[mode].append(rps)
        print(f"round {r + 1} {mode:6} {rps:10.0f} req/s", flush=True)
bare = statistics.median(results["bare"])
for mode, values in results.items():
    median = statistics.median(values)
    per_request_us = 1e6 / median
    print(f"e2e/{mode:6} median {median:9.0f} req/s  {per_request_us:6.2f} us/req  "
          f"ratio to bare {median / bare:5.3f}  (+{per_request_us - 1e6 / bare:5.2f} us/req)")
PY

echo "== 5. instructions per request (callgrind; SHA-256 runs without SHA-NI under valgrind)"
python3 - <<'PY'
import re, subprocess
def total(mode, n):
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          "./target/release/examples/bench_driver", mode, str(n)],
                         capture_output=True, text=True).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))
per = {}
for mode in ["bare", "bearer", "floor", "layer"]:
    per[mode] = (total(mode, 40000) - total(mode, 20000)) / 20000
for mode, value in per.items():
    print(f"callgrind/{mode:6} {value:7.0f} instructions/request  (+{value - per['bare']:5.0f} over bare)")
PY
