#!/bin/sh
# volume.sh create PATH SIZE_MIB | remove PATH: sparse backing files for vblade exports.
#
# create refuses (exit 3) if PATH exists: never overwrite somebody's disk. remove is idempotent
# and refuses a file that an export still serves or is configured to serve, and anything that is
# not a regular file. Production LVM volumes are not handled here yet.
set -u
[ -n "${XENAOE_VBLADE_LIB:-}" ] || . "$(dirname -- "$0")/vblade-lib.sh"

usage="usage: volume.sh create PATH SIZE_MIB | remove PATH"
[ $# -ge 2 ] || die "$EX_REFUSED" "$usage"
action=$1 path=$2
case $path in /*) ;; *) die "$EX_REFUSED" "path must be absolute: $path" ;; esac

take_lock
case $action in
create)
	# At most 1 PiB (drivers/vblade.py MAX_VOLUME_MIB, which bounds the panel's XENAOE_VM_MAX_DISK_MIB).
	[ $# -eq 3 ] && valid_number "$3" 1073741824 && [ "$3" -gt 0 ] || die "$EX_REFUSED" "$usage"
	[ ! -e "$path" ] && [ ! -L "$path" ] || die "$EX_REFUSED" "$path already exists"
	mkdir -p "$(dirname -- "$path")" || die "$EX_REFUSED" "cannot create the directory of $path"
	# noclobber: the file is created only if nobody else created it meanwhile
	(set -C && : >"$path") 2>/dev/null || die "$EX_REFUSED" "cannot create $path"
	if ! truncate -s "$3M" "$path"; then
		rm -f "$path"
		die "$EX_REFUSED" "cannot size $path to $3 MiB"
	fi
	;;
remove)
	[ $# -eq 2 ] || die "$EX_REFUSED" "$usage"
	[ -e "$path" ] || [ -L "$path" ] || exit 0
	[ -f "$path" ] && [ ! -L "$path" ] || die "$EX_REFUSED" "$path is not a regular file"
	for conf in "$EXPORTS_DIR"/e*.conf; do
		[ -f "$conf" ] || continue
		if read_conf "$conf" 2>/dev/null && [ "$conf_path" = "$path" ]; then
			die "$EX_REFUSED" "$path is still exported as e$conf_shelf.$conf_slot"
		fi
	done
	for pidfile in "$PID_DIR"/e*.pid; do
		[ -f "$pidfile" ] || continue
		name=${pidfile##*/}
		if pid=$(running_pid "${name%.pid}") && read_cmdline "$pid" && [ "$cmd_path" = "$path" ]; then
			die "$EX_REFUSED" "$path is still served by ${name%.pid} (pid $pid)"
		fi
	done
	rm -f "$path"
	;;
*) die "$EX_REFUSED" "$usage" ;;
esac
