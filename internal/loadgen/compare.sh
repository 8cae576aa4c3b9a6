#!/usr/bin/env bash
# Runs Postfix's smtp-source and our loadgen against the same smtp-sink, in
# alternating rounds, and prints messages per second and the ratio
# loadgen / smtp-source (above 1 means loadgen is faster), for
# smtpclient.Client and for the wire layer alone.
#
#   internal/loadgen/compare.sh [rounds] [connections] [messages] [size]
#
# Both programs are timed the same way (wall clock around the process), so
# process start and connection setup count for both.
set -euo pipefail

rounds=${1:-3}
conns=${2:-16}
msgs=${3:-20000}
size=${4:-2048}

find_bin() {
	local name=$1 dir
	if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
	for dir in /usr/sbin /usr/lib/postfix/sbin /usr/libexec/postfix; do
		if [[ -x $dir/$name ]]; then echo "$dir/$name"; return; fi
	done
	echo "compare.sh: $name not found (install the postfix package)" >&2
	exit 1
}
sink_bin=$(find_bin smtp-sink)
source_bin=$(find_bin smtp-source)

repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
sink_pid=
cleanup() {
	if [[ -n $sink_pid ]]; then kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT

(cd "$repo" && go build -o "$work/loadgen" ./internal/loadgen/cmd/loadgen)

# Start smtp-sink on a free loopback port.
user_opt=()
if [[ $(id -u) -eq 0 ]]; then user_opt=(-u nobody); fi
for attempt in $(seq 1 20); do
	port=$((20000 + RANDOM % 30000))
	"$sink_bin" "${user_opt[@]}" "127.0.0.1:$port" 1024 2>"$work/sink.err" &
	sink_pid=$!
	for _ in $(seq 1 50); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break 2; fi
		if ! kill -0 "$sink_pid" 2>/dev/null; then break; fi
		sleep 0.1
	done
	kill "$sink_pid" 2>/dev/null || true
	wait "$sink_pid" 2>/dev/null || true
	sink_pid=
done
if [[ -z $sink_pid ]]; then
	echo "compare.sh: smtp-sink did not start: $(cat "$work/sink.err")" >&2
	exit 1
fi
addr=127.0.0.1:$port

now() { date +%s%N; }
# rate CMD...: runs CMD, prints messages/s by the wall clock.
rate() {
	local t0 t1
	t0=$(now)
	"$@" >/dev/null
	t1=$(now)
	awk -v n="$msgs" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}

echo "smtp-sink on $addr; $conns connections, $msgs messages of $size bytes, $rounds rounds"
# Columns: smtp-source; smtpclient.Client (what an importer gets: pool,
# RSET pipelined with the next transaction when offered); loadgen on
# smtpwire with RSET pipelined, in lockstep, and without RSET (like
# smtp-source, which sends none); loadgen on go-smtp's client without RSET;
# then each rate divided by smtp-source's.
printf "%-6s %12s %12s %12s %12s %12s %12s %8s %8s %8s %8s %8s\n" round smtp-source client "wire pipe" "wire lock" "wire none" go-smtp r-client r-pipe r-lock r-none r-gosmtp
r_client=() r_pipe=() r_lock=() r_none=() r_gosmtp=()
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
lg() { rate "$work/loadgen" -q "$@" -addr "$addr" -c "$conns" -m "$msgs" -s "$size"; }
src_run() { rate "$source_bin" -d -s "$conns" -m "$msgs" -l "$size" "$addr"; }
for r in $(seq 1 "$rounds"); do
	# Alternate the order so that neither side always runs on a warmer machine.
	if ((r % 2)); then
		src=$(src_run) client=$(lg -client) pipe=$(lg -rset pipelined) lock=$(lg -rset lockstep) none=$(lg -rset none) gosmtp=$(lg -rset none -gosmtp)
	else
		gosmtp=$(lg -rset none -gosmtp) none=$(lg -rset none) lock=$(lg -rset lockstep) pipe=$(lg -rset pipelined) client=$(lg -client) src=$(src_run)
	fi
	r_client+=("$(ratio "$client" "$src")")
	r_pipe+=("$(ratio "$pipe" "$src")")
	r_lock+=("$(ratio "$lock" "$src")")
	r_none+=("$(ratio "$none" "$src")")
	r_gosmtp+=("$(ratio "$gosmtp" "$src")")
	printf "%-6s %12s %12s %12s %12s %12s %12s %8s %8s %8s %8s %8s\n" "$r" "$src" "$client" "$pipe" "$lock" "$none" "$gosmtp" "${r_client[-1]}" "${r_pipe[-1]}" "${r_lock[-1]}" "${r_none[-1]}" "${r_gosmtp[-1]}"
done
median() { printf "%s\n" "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "median ratio to smtp-source: smtpclient.Client $(median "${r_client[@]}"); smtpwire with RSET pipelined $(median "${r_pipe[@]}"), in lockstep $(median "${r_lock[@]}"), without RSET $(median "${r_none[@]}"); go-smtp's client without RSET $(median "${r_gosmtp[@]}")"
