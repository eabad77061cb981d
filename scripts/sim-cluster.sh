#!/usr/bin/env bash
# The project's own simulated cluster: N hosts on one Linux machine, each a set of network, UTS, IPC, mount
# and PID namespaces (PIDs repeat across hosts, as on separate machines). Each host has its own hostname
# (node1..nodeN), its own /tmp and /dev/shm, its own /etc/hosts, and sees the shared folder at its own path
# (/media/share1 on node1, /media/share2 on node2, ...). The hosts are wired to one bridge that lives in a
# namespace of its own, with addresses from 10.213.0.0/24 that exist only inside these namespaces.
# mpirun starts processes on the hosts through Open MPI's rsh agent (scripts/sim-cluster-rsh).
#
# Usage (as root; installs iproute2, util-linux and python3 when missing):
#   scripts/sim-cluster.sh up N SHARED_DIR [SLOTS]   make hosts node1..nodeN with SLOTS slots each (default 2)
#   scripts/sim-cluster.sh run [MPIRUN OPTIONS] PROGRAM [ARGS]
#                                                    mpirun from node1 over the cluster's hostfile, e.g. -n 8
#   scripts/sim-cluster.sh exec HOST COMMAND...      run a command on one host (its login environment)
#   scripts/sim-cluster.sh cut HOST | mend HOST      take a host's network link down, or up again
#   scripts/sim-cluster.sh next-pid N                make the next process on every host get PID N+1 or so
#   scripts/sim-cluster.sh hostfile                  print the hostfile
#   scripts/sim-cluster.sh status                    say whether the cluster is up and list its hosts
#   scripts/sim-cluster.sh down                      remove every host, the bridge and the state
#   scripts/sim-cluster.sh check                     install what is missing; say why hosts cannot be made here
#
# Each host's login environment (what a remote shell on it starts with) is in STATE/HOST/env; it sets
# PARALLEL_MIRRORED_STORAGE and SIM_CLUSTER_SHARE to the host's own path of the shared folder. The program
# must be at the same path on every host: the hosts see the machine's filesystem, except /tmp, /dev/shm and
# /media, which are their own. STATE is $SIM_CLUSTER_STATE (default /run/parallelvm-sim-cluster).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
state=${SIM_CLUSTER_STATE:-/run/parallelvm-sim-cluster}
export SIM_CLUSTER_STATE=$state
subnet_prefix=10.213.0
subnet=$subnet_prefix.0/24
agent=$root/scripts/sim-cluster-rsh

die() {
  echo "sim-cluster: $*" >&2
  exit 1
}

# Installs what is missing, as scripts/setup.sh does.
require_tools() {
  [ "$(id -u)" = 0 ] || die "needs root (namespaces, mounts and network devices)"
  local missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  { command -v unshare && command -v nsenter; } >/dev/null 2>&1 || missing+=(util-linux)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]} ..." >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

hosts() { sed -n 's/ .*//p' "$state/hostfile"; }

host_pid() {
  [ -f "$state/$1/pid" ] || die "no host named '$1' (is the cluster up?)"
  cat "$state/$1/pid"
}

# The script each host's first process (PID 1 of its PID namespace) runs: it names the host, gives it its
# own /tmp, /dev/shm, /media and /etc/hosts, mounts the shared folder at the host's path, and then stays,
# reaping orphans, until `down` kills it.
host_init() {
  cat <<'EOF'
set -euo pipefail
name=$1 share=$2 shared=$3 state=$4 project=$5
read -r pid _ </proc/self/stat        # this process's PID as the machine sees it (/proc is still the machine's)
hostname "$name"
mount -t tmpfs -o mode=755 sim-media /media
mkdir -p "$share"
mount --bind "$shared" "$share"       # before /tmp is covered, in case the shared folder is under it
# The project (its scripts and built programs) must stay at its path on every host, even under /tmp.
case "$project/" in
  /tmp/*) mkdir -p /media/.project && mount --bind "$project" /media/.project ;;
esac
mount -t tmpfs -o mode=1777 sim-tmp /tmp
case "$project/" in
  /tmp/*) mkdir -p "$project" && mount --bind /media/.project "$project" ;;
esac
mount -t tmpfs -o mode=1777 sim-shm /dev/shm
mount --bind "$state/hosts" /etc/hosts
mount -t proc proc /proc              # this host's processes only
echo "$pid" >"$state/$name/pid.new"
mv "$state/$name/pid.new" "$state/$name/pid"
trap 'exit 0' TERM
while :; do
  sleep 3600 &
  wait $! || true
done
EOF
}

# Whether this machine lets us make the hosts; prints the reason and fails when not.
check() {
  [ "$(id -u)" = 0 ] || { echo "not root: namespaces, mounts and network devices need root"; return 1; }
  require_tools
  unshare --net --uts --ipc --mount --pid --fork --propagation private true 2>/dev/null ||
    { echo "cannot create network, UTS, IPC, mount and PID namespaces here (unshare refused)"; return 1; }
  unshare --net sh -c 'ip link add sim-probe0 type veth peer name sim-probe1 && ip link add sim-probe2 type bridge' \
    2>/dev/null || { echo "cannot create veth pairs or bridges in a network namespace here"; return 1; }
  mkdir -p /media
  unshare --mount --propagation private sh -c 'mount -t tmpfs sim-probe /media' 2>/dev/null ||
    { echo "cannot mount inside a mount namespace here"; return 1; }
}

up() {
  [ $# -ge 2 ] || die "usage: $0 up N SHARED_DIR [SLOTS]"
  local count=$1 shared slots=${3:-2}
  case $count in '' | *[!0-9]* | 0) die "N must be a positive number, not '$count'" ;; esac
  [ "$count" -le 200 ] || die "at most 200 hosts"
  case $slots in '' | *[!0-9]* | 0) die "SLOTS must be a positive number, not '$slots'" ;; esac
  shared=$(cd "$2" && pwd -P) || die "no folder $2"
  require_tools
  [ ! -e "$state/hostfile" ] || die "already up ($state); run '$0 down' first"
  mkdir -p "$state" /media
  chmod 700 "$state"

  # The launcher the rsh agent hands its requests to; it runs outside every host.
  setsid "$agent" --serve "$state" </dev/null >>"$state/launcher.log" 2>&1 &
  echo $! >"$state/launcher.pid"

  # The switch: one bridge in a network namespace of its own.
  unshare --net sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$state/switch.pid"
  local switch=$!
  # unshare has made the namespace once it runs sleep.
  for _ in $(seq 1 100); do
    [ "$(readlink "/proc/$switch/ns/net" 2>/dev/null)" != "$(readlink /proc/self/ns/net)" ] &&
      grep -q sleep "/proc/$switch/cmdline" 2>/dev/null && break
    sleep 0.02
  done
  nsenter -t "$switch" -n ip link add sim-br0 type bridge
  nsenter -t "$switch" -n ip link set sim-br0 up

  {
    echo "127.0.0.1 localhost"
    for i in $(seq 1 "$count"); do echo "$subnet_prefix.$i node$i"; done
  } >"$state/hosts"
  host_init >"$state/host-init.sh"
  : >"$state/hostfile.new"
  local i name pid
  for i in $(seq 1 "$count"); do
    name=node$i
    mkdir -p "$state/$name"
    cat >"$state/$name/env" <<EOF
PARALLEL_MIRRORED_STORAGE=/media/share$i
SIM_CLUSTER_SHARE=/media/share$i
SIM_CLUSTER_HOST=$name
EOF
    unshare --net --uts --ipc --mount --pid --fork --propagation private \
      bash "$state/host-init.sh" "$name" "/media/share$i" "$shared" "$state" "$root" </dev/null >>"$state/$name/log" 2>&1 &
    echo $! >"$state/$name/unshare.pid"
    echo "$name slots=$slots" >>"$state/hostfile.new"
  done
  for i in $(seq 1 "$count"); do
    name=node$i
    for _ in $(seq 1 100); do
      [ -f "$state/$name/pid" ] && break
      kill -0 "$(cat "$state/$name/unshare.pid")" 2>/dev/null || die "host $name did not start: $(cat "$state/$name/log")"
      sleep 0.05
    done
    [ -f "$state/$name/pid" ] || die "host $name did not start in time"
    pid=$(cat "$state/$name/pid")
    nsenter -t "$switch" -n ip link add "sim-$name" type veth peer name eth0 netns "$pid"
    nsenter -t "$switch" -n ip link set "sim-$name" master sim-br0 up
    nsenter -t "$pid" -n ip link set lo up
    nsenter -t "$pid" -n ip addr add "$subnet_prefix.$i/24" dev eth0
    nsenter -t "$pid" -n ip link set eth0 up
  done
  mv "$state/hostfile.new" "$state/hostfile"
  for _ in $(seq 1 100); do [ -S "$state/rsh.sock" ] && break; sleep 0.05; done
  [ -S "$state/rsh.sock" ] || die "the launcher did not start: $(cat "$state/launcher.log")"
  echo "sim-cluster: $count hosts up (node1..node$count, $slots slots each); shared folder $shared at /media/shareN on nodeN" >&2
}

down() {
  [ -d "$state" ] || return 0
  local file pid
  for file in "$state"/node*/unshare.pid "$state"/node*/pid "$state/switch.pid" "$state/launcher.pid"; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    # Only a process this script started: check it is still the one recorded (its command line).
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qE 'unshare|host-init|sim-cluster-rsh|sleep infinity'; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Killing a host's first process ends its PID namespace (every process in it) and with it its network
  # namespace, its veth pair and its mounts; the switch's namespace takes the bridge along.
  for file in "$state"/node*/unshare.pid "$state/switch.pid" "$state/launcher.pid"; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done
  rm -rf "$state"
}

# Runs a command on HOST with its login environment, from the current folder when the host sees it.
exec_on() {
  local host=$1 pid
  shift
  pid=$(host_pid "$host")
  local env=()
  while IFS= read -r line; do [ -n "$line" ] && env+=("$line"); done <"$state/$host/env"
  exec nsenter --target "$pid" --net --uts --ipc --mount --pid --wd="$PWD" -- env "${env[@]}" "$@"
}

# Sets every host's ns_last_pid, so that the processes the same launch starts on each host get the same
# PIDs there: what separate machines give by chance, made certain for tests about repeated PIDs.
next_pid() {
  [ $# = 1 ] && [[ $1 =~ ^[0-9]+$ ]] || die "usage: $0 next-pid N (a number)"
  local host
  for host in $(hosts); do
    nsenter --target "$(host_pid "$host")" --mount --pid -- sh -c 'echo "$0" >/proc/sys/kernel/ns_last_pid' "$1" ||
      die "could not set the next PID on $host"
  done
}

run() {
  [ -f "$state/hostfile" ] || die "the cluster is not up; run '$0 up N SHARED_DIR' first"
  exec_on node1 "$root/scripts/mpirun.sh" --hostfile "$state/hostfile" \
    --mca plm_rsh_agent "$agent" --mca plm_rsh_no_tree_spawn 1 \
    --mca oob_tcp_if_include "$subnet" --mca btl_tcp_if_include "$subnet" --mca btl self,vader,tcp \
    "$@"
}

command=${1:-}
[ $# -gt 0 ] && shift
case $command in
  up) up "$@" ;;
  down) down ;;
  run) run "$@" ;;
  check) check ;;
  exec)
    [ $# -ge 2 ] || die "usage: $0 exec HOST COMMAND..."
    exec_on "$@"
    ;;
  next-pid) next_pid "$@" ;;
  cut | mend)
    [ $# = 1 ] || die "usage: $0 $command HOST"
    nsenter --target "$(host_pid "$1")" --net -- ip link set eth0 "$([ "$command" = cut ] && echo down || echo up)"
    ;;
  hostfile) cat "$state/hostfile" ;;
  status)
    if [ -f "$state/hostfile" ]; then
      echo "up: $(hosts | tr '\n' ' ')"
    else
      echo "down"
      exit 1
    fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
