#!/usr/bin/env bash
# Records real uWSGI cache-sync traffic into a pcap the bench can replay.
#
# Starts NODES uWSGI nodes (python3 plugin) on 127.0.0.1, each with
#   cache2     = name=ssl,items=2000,blocksize=4096,udp=127.0.0.1:<own port>,node=127.0.0.1:REPEATER_PORT
#   subscribe2 = server=127.0.0.1:REPEATER_PORT,key=ssl,addr=127.0.0.1:<own port>
# and, when it is built, a real udprepeater on REPEATER_PORT (so the nodes'
# caches really sync), then drives them with bench/capture/drive.py (new
# sessions, renewals, invalidations, resumptions) while tcpdump records every
# datagram the nodes send to the repeater port on lo.
#
# usage: bench/capture/record.sh [OUT.pcap]
# environment (defaults): NODES=3 DURATION=12 RATE=120 REPEATER_PORT=7171
#   NODE_UDP_BASE=4141 NODE_HTTP_BASE=9141 NO_REPEATER=1 (record without a repeater)
# needs: uwsgi with the python3 plugin (apt-get install uwsgi-core uwsgi-plugin-python3),
#        tcpdump (apt-get install tcpdump), python3; root or CAP_NET_RAW for tcpdump.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/bench/captures/uwsgi-sessions.pcap}"
NODES="${NODES:-3}"
DURATION="${DURATION:-12}"
RATE="${RATE:-120}"
RP="${REPEATER_PORT:-7171}"
UDP_BASE="${NODE_UDP_BASE:-4141}"
HTTP_BASE="${NODE_HTTP_BASE:-9141}"

die() { echo "record.sh: $*" >&2; exit 1; }
command -v uwsgi >/dev/null || die "uwsgi not found (apt-get install uwsgi-core uwsgi-plugin-python3)"
command -v tcpdump >/dev/null || die "tcpdump not found (apt-get install tcpdump)"
command -v python3 >/dev/null || die "python3 not found"

port_busy() { # $1 = udp|tcp, $2 = port
  local table=/proc/net/$1 hex
  hex=$(printf ':%04X ' "$2")
  awk 'NR > 1 { print $2 " " }' "$table" | grep -q "$hex"
}
port_busy udp "$RP" && die "UDP port $RP is in use; set REPEATER_PORT"
for i in $(seq 0 $((NODES - 1))); do
  port_busy udp $((UDP_BASE + i)) && die "UDP port $((UDP_BASE + i)) is in use; set NODE_UDP_BASE"
  port_busy tcp $((HTTP_BASE + i)) && die "TCP port $((HTTP_BASE + i)) is in use; set NODE_HTTP_BASE"
done

work="$(mktemp -d /tmp/udprepeater-record.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# 1. tcpdump first, so the first subscription announces are captured.
#    -s 0: whole datagrams; -U: write each packet at once; lo carries each datagram once.
tcpdump -i lo -s 0 -U -n -w "$work/capture.pcap" "udp and dst host 127.0.0.1 and dst port $RP" 2>"$work/tcpdump.log" &
pids+=($!)
for _ in $(seq 50); do grep -q "listening on" "$work/tcpdump.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening on" "$work/tcpdump.log" || die "tcpdump did not start: $(cat "$work/tcpdump.log")"

# 2. The repeater, when built (npm run build:dev), so the nodes really sync.
if [ -z "${NO_REPEATER:-}" ] && [ -f "$root/build/src/cli.js" ]; then
  node "$root/build/src/cli.js" serve --listen "127.0.0.1:$RP" --metrics off --log-level warn 2>"$work/repeater.log" &
  pids+=($!)
  echo "record.sh: udprepeater listening on 127.0.0.1:$RP"
else
  echo "record.sh: recording without a repeater (nothing listens on $RP; the nodes do not sync)"
fi

# 3. The nodes.
ports=()
node_pids=()
for i in $(seq 0 $((NODES - 1))); do
  up=$((UDP_BASE + i))
  hp=$((HTTP_BASE + i))
  uwsgi --plugin python3 --http-socket "127.0.0.1:$hp" --wsgi-file "$here/app.py" \
    --master --processes 1 --threads 1 --die-on-term --disable-logging --need-app \
    --cache2 "name=ssl,items=2000,blocksize=4096,udp=127.0.0.1:$up,node=127.0.0.1:$RP" \
    --subscribe2 "server=127.0.0.1:$RP,key=ssl,addr=127.0.0.1:$up" \
    >"$work/node$i.log" 2>&1 &
  pids+=($!)
  node_pids+=($!)
  ports+=("$hp")
done
for hp in "${ports[@]}"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$hp/get?id=00" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$hp/get?id=00" >/dev/null || die "node on $hp did not come up: $(tail -5 "$work"/node*.log)"
done
echo "record.sh: $NODES uWSGI nodes up (HTTP ${ports[*]}); driving ${DURATION} s at ${RATE} requests/s"

# 4. The workload, then a clean stop: SIGTERM makes each node send its unsubscribe.
python3 "$here/drive.py" "$DURATION" "$RATE" "${ports[@]}"
sleep 0.5
for p in "${node_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
sleep 1.5
kill -INT "${pids[0]}" 2>/dev/null || true
wait "${pids[0]}" 2>/dev/null || true
mkdir -p "$(dirname "$out")"
cp "$work/capture.pcap" "$out"
echo "record.sh: wrote $out ($(stat -c %s "$out") bytes)"
if [ -f "$root/build/bench/run.js" ]; then node "$root/build/bench/run.js" pcap-info "$out"; fi
