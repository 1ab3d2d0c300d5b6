# shellcheck shell=bash disable=SC2016  # the awk programs in single quotes are for awk
# Shell helpers shared by the bench scripts (sourced, not run).

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits up to 10 s for something to listen on a loopback port.
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

# Sums a number that awk reads from /proc/<pid>/<file> over a process and its children.
sum_over_tree() {  # file awk-program pid
  local file=$1 program=$2 total=0 pid n
  shift 2
  for pid in "$@" $(pgrep -P "$1" || true); do
    n=$(awk "$program" "/proc/$pid/$file" 2>/dev/null || echo 0)
    total=$((total + ${n:-0}))
  done
  echo "$total"
}

# CPU seconds (user + system, all threads and, for nginx, all workers) of a process and its children.
cpu_seconds() {
  echo "scale=4; $(sum_over_tree stat '{print $14 + $15}' "$@") / $(getconf CLK_TCK)" | bc | awk '{printf "%.4f", $1}'
}

# Peak resident set (VmHWM, kB) of a process and its children, summed.
peak_rss_kb() { sum_over_tree status '/VmHWM/ {print $2}' "$@"; }

# Restarts the peak resident set of a process and its children at their current size (Linux ≥ 4.0),
# so that a run reports its own peak rather than the process's lifetime peak.
reset_peak_rss() {
  local pid
  for pid in "$@" $(pgrep -P "$1" || true); do echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true; done
}
