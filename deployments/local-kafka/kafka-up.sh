#!/usr/bin/env bash
# kafka-up.sh starts a single-node Apache Kafka broker+controller (KRaft) on
# 127.0.0.1:${KAFKA_PORT:-9092} and returns once it answers a Metadata request.
# It prints the bootstrap address on stdout; progress and errors go to stderr.
# See README.md in this directory.
set -euo pipefail
KK_CMD=kafka-up
# shellcheck source=broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/broker.sh"

kk_init
kk_require_java
kk_lock_port

if kk_state_read; then
	if kk_is_ours "$KK_PID"; then
		kk_log "already running: pid $KK_PID on $KK_BOOTSTRAP, data $KK_DATA_DIR"
		kk_wait_ready
		printf '%s\n' "$KK_BOOTSTRAP"
		exit 0
	fi
	if [[ -f $KK_DATA_DIR/.kpush-local-kafka ]]; then
		# Left behind by `kafka-ctl.sh kill9` or `stop`, or a crash.
		kk_start_existing
		kk_log "ready: pid $KK_PID on $KK_BOOTSTRAP, data $KK_DATA_DIR (restarted), log $KK_DATA_DIR/logs/server.log"
		printf '%s\n' "$KK_BOOTSTRAP"
		exit 0
	fi
	kk_log "removing stale state file $KK_STATE_FILE (its data directory is gone)"
	rm -f "$KK_STATE_FILE"
fi

kk_check_ports_free
start=$SECONDS
kk_resolve_jars
kk_new_data_dir
kk_launch
kk_wait_ready
kk_log "ready in $((SECONDS - start))s: Kafka $KK_KAFKA_VERSION pid $KK_PID on $KK_BOOTSTRAP, data $KK_DATA_DIR, log $KK_DATA_DIR/logs/server.log"
printf '%s\n' "$KK_BOOTSTRAP"
