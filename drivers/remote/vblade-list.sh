#!/bin/sh
# vblade-list.sh: one line per running export started by these scripts (see print_running).
# Built from our own pid files only: other processes on the machine are none of our business.
set -u
[ -n "${XENAOE_VBLADE_LIB:-}" ] || . "$(dirname -- "$0")/vblade-lib.sh"

take_lock
for pidfile in "$PID_DIR"/e*.pid; do
	[ -f "$pidfile" ] || continue
	name=${pidfile##*/}
	print_running "${name%.pid}" || true
done
