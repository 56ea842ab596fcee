#!/bin/sh
# vblade-export.sh [-r] SHELF SLOT INTERFACE PATH [MACS]: serve PATH as eSHELF.SLOT and persist it;
# -r: read-only (an ISO many guests share: writes are refused on the wire).
#
# Idempotent: the same export already running is left alone; the same shelf.slot and file with
# another interface, MAC list or mode is restarted with the new settings (that is how a host is fenced
# out through storage). Refused (exit 3): the shelf.slot is taken by another file, or the file is
# already exported under another shelf.slot (two exports writing one file destroy it).
# Prints the running export as one line (see print_running).
set -u
[ -n "${XENAOE_VBLADE_LIB:-}" ] || . "$(dirname -- "$0")/vblade-lib.sh"

ro=0
if [ "${1:-}" = -r ]; then
	ro=1
	shift
fi
[ $# -eq 4 ] || [ $# -eq 5 ] || die "$EX_REFUSED" "usage: vblade-export.sh [-r] SHELF SLOT INTERFACE PATH [MACS]"
shelf=$1 slot=$2 iface=$3 path=$4 macs=${5:-}
valid_spec "$shelf" "$slot" "$iface" "$path" "$macs" || exit "$EX_REFUSED"
name=e$shelf.$slot
conf=$EXPORTS_DIR/$name.conf

take_lock

was_running=
if pid=$(running_pid "$name"); then
	read_cmdline "$pid"
	[ "$cmd_path" = "$path" ] || die "$EX_REFUSED" "$name is already served from $cmd_path (pid $pid)"
	was_running=1 old_iface=$cmd_iface old_macs=$cmd_macs old_ro=$cmd_ro
fi
had_conf=
if [ -f "$conf" ]; then
	if read_conf "$conf" && [ "$conf_path" != "$path" ]; then
		die "$EX_REFUSED" "$name is configured for $conf_path ($conf)"
	fi
	had_conf=1
	cp -p "$conf" "$conf.old"
fi
for other in "$EXPORTS_DIR"/*.conf; do
	[ -f "$other" ] && [ "$other" != "$conf" ] || continue
	if read_conf "$other" 2>/dev/null && [ "$conf_path" = "$path" ]; then
		die "$EX_REFUSED" "$path is already exported as e$conf_shelf.$conf_slot"
	fi
done

# Persist before starting: a crash in between leaves an export that restore brings up, not a
# running vblade nobody knows about.
write_conf "$shelf" "$slot" "$iface" "$path" "$macs" "$ro" || die 1 "cannot write $conf"

if [ -n "$was_running" ] && [ "$old_iface" = "$iface" ] && [ "$old_macs" = "$macs" ] && [ "$old_ro" = "$ro" ]; then
	rm -f "$conf.old"
	print_running "$name"
	exit 0
fi
if [ -n "$was_running" ]; then
	stop_vblade "$name" || exit $?
fi
if start_vblade "$shelf" "$slot" "$iface" "$path" "$macs" "$ro"; then
	rm -f "$conf.old"
	print_running "$name" || die "$EX_TEMPORARY" "$name: vblade exited right after starting"
	exit 0
else
	status=$?
fi
# Undo: put back the previous config and, if it was serving before, the previous vblade.
if [ -n "$had_conf" ]; then
	mv -f "$conf.old" "$conf"
else
	rm -f "$conf"
fi
if [ -n "$was_running" ]; then
	start_vblade "$shelf" "$slot" "$old_iface" "$path" "$old_macs" "$old_ro" >/dev/null 2>&1
fi
exit "$status"
