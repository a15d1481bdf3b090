#!/usr/bin/env bash
# kafka-down.sh stops the broker kafka-up.sh started on ${KAFKA_PORT:-9092}
# (SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT seconds) and deletes its data
# directory and state file. Exits 0 when nothing of ours is running.
set -euo pipefail
KK_CMD=kafka-down
# shellcheck source=broker.sh
source "$(dirname "${BASH_SOURCE[0]}")/broker.sh"

kk_init
kk_lock_port

if ! kk_state_read; then
	if kk_port_open "$KK_PORT"; then
		kk_log "no state file $KK_STATE_FILE; 127.0.0.1:$KK_PORT is served by a process kpush did not start, leaving it alone"
	else
		kk_log "no local kafka on port $KK_PORT"
	fi
	exit 0
fi

if kk_is_ours "$KK_PID"; then
	kk_log "stopping broker pid $KK_PID on $KK_BOOTSTRAP"
	kk_stop TERM
else
	kk_log "broker pid $KK_PID is not running"
fi

if [[ -f $KK_DATA_DIR/.kpush-local-kafka ]]; then
	rm -rf -- "$KK_DATA_DIR"
	kk_log "removed $KK_DATA_DIR"
elif [[ -e $KK_DATA_DIR ]]; then
	kk_log "not removing $KK_DATA_DIR: it lacks the .kpush-local-kafka marker"
fi
rm -f "$KK_STATE_FILE"
