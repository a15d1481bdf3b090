#!/usr/bin/env bash
# kafka-ctl.sh drives the broker kafka-up.sh started on ${KAFKA_PORT:-9092},
# found through its state file; meant for fault-injection tests.
set -euo pipefail
KK_CMD=kafka-ctl
# shellcheck source=broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/broker.sh"

usage() {
	cat >&2 <<'USAGE'
usage: kafka-ctl.sh COMMAND [ARGS]   (KAFKA_PORT selects the broker, default 9092)

  pid                          print the broker's PID (exit 1 if not running)
  bootstrap                    print the bootstrap address, 127.0.0.1:PORT
  log                          print the path of the broker's server.log
  kill9                        kill -9 the broker; its data is kept
  stop                         stop the broker gracefully (SIGTERM); data kept
  start                        start it again on the same data and port, wait ready
  create-topic NAME PARTITIONS [KEY=VALUE...]
                               create a topic (replication factor 1), with
                               optional topic configs, e.g. retention.ms=1000
  add-partitions NAME TOTAL    grow a topic to TOTAL partitions
  describe-topic NAME          show partitions, leaders and ISR
  delete-topic NAME            delete a topic
  list-topics                  list topic names
USAGE
	exit 2
}

# need_state loads the state file or fails with what to do.
need_state() {
	kk_state_read || kk_die "no local kafka state for port $KK_PORT ($KK_STATE_FILE); run kafka-up.sh first"
}

# need_running also requires the broker to be alive, and the tools ready.
need_running() {
	need_state
	kk_is_ours "$KK_PID" ||
		kk_die "the broker on port $KK_PORT (pid $KK_PID) is not running; run kafka-ctl.sh start"
	kk_require_java
	kk_resolve_jars
}

need_args() {
	local want=$1
	shift
	(($# == want)) || usage
}

need_count() {
	if [[ ! $2 =~ ^[0-9]+$ ]] || ((10#$2 < 1)); then
		kk_die "$1 must be a positive integer, got '$2'"
	fi
}

(($# >= 1)) || usage
cmd=$1
shift
KK_CMD="kafka-ctl $cmd"
kk_init

case $cmd in
pid)
	need_args 0 "$@"
	need_state
	kk_is_ours "$KK_PID" || kk_die "the broker on port $KK_PORT (pid $KK_PID) is not running"
	printf '%s\n' "$KK_PID"
	;;
bootstrap)
	need_args 0 "$@"
	printf '%s\n' "$KK_BOOTSTRAP"
	;;
log)
	need_args 0 "$@"
	need_state
	printf '%s\n' "$KK_DATA_DIR/logs/server.log"
	;;
kill9 | stop)
	need_args 0 "$@"
	kk_lock_port
	need_state
	if ! kk_is_ours "$KK_PID"; then
		kk_log "the broker on port $KK_PORT (pid $KK_PID) is not running"
		exit 0
	fi
	if [[ $cmd == kill9 ]]; then kk_stop KILL; else kk_stop TERM; fi
	kk_log "broker pid $KK_PID stopped; data kept in $KK_DATA_DIR"
	;;
start)
	need_args 0 "$@"
	kk_lock_port
	need_state
	kk_require_java
	if kk_is_ours "$KK_PID"; then
		kk_log "already running: pid $KK_PID on $KK_BOOTSTRAP"
		kk_wait_ready
		exit 0
	fi
	start=$SECONDS
	kk_start_existing
	kk_log "ready in $((SECONDS - start))s: pid $KK_PID on $KK_BOOTSTRAP"
	;;
create-topic)
	(($# >= 2)) || usage
	need_count PARTITIONS "$2"
	need_running
	name=$1 partitions=$2
	shift 2
	configs=()
	for kv in "$@"; do
		[[ $kv == ?*=* ]] || kk_die "topic config must be KEY=VALUE, got '$kv'"
		configs+=(--config "$kv")
	done
	kk_topics --create --topic "$name" --partitions "$partitions" --replication-factor 1 "${configs[@]}" ||
		kk_die "creating topic '$name' with $partitions partitions failed"
	;;
add-partitions)
	need_args 2 "$@"
	need_count TOTAL "$2"
	need_running
	kk_topics --alter --topic "$1" --partitions "$2" ||
		kk_die "growing topic '$1' to $2 partitions failed"
	kk_log "topic '$1' now has $2 partitions"
	;;
describe-topic)
	need_args 1 "$@"
	need_running
	kk_topics --describe --topic "$1" || kk_die "describing topic '$1' failed"
	;;
delete-topic)
	need_args 1 "$@"
	need_running
	kk_topics --delete --topic "$1" || kk_die "deleting topic '$1' failed"
	;;
list-topics)
	need_args 0 "$@"
	need_running
	kk_topics --list || kk_die "listing topics failed"
	;;
*)
	usage
	;;
esac
