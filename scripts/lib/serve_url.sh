# Sourced by the scripts that start safeloop-serve on --port 0 (bench_gate, bench_http, bench_swap, gate_rates, soak).
# serve_url LOG [TENTHS]: waits until the server writing LOG has said where it listens and answers /health (up to
# TENTHS tenths of a second, default 600), then prints its URL; otherwise prints LOG's tail to stderr and returns 1.
serve_url() {
  local log=$1 tries=${2:-600} url=""
  for _ in $(seq 1 "$tries"); do
    url=$(sed -n 's/^safeloop-serve: listening on //p' "$log" | head -n1)
    if [ -n "$url" ] && curl -sf "$url/health" >/dev/null 2>&1; then
      echo "$url"
      return 0
    fi
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  echo "safeloop-serve did not become ready (log: $log)" >&2
  return 1
}
