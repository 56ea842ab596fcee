# vblade-lib.sh: conventions and helpers shared by the vblade scripts of this directory (POSIX sh).
#
# The panel sends this file followed by one of the scripts on stdin (`sh -s -- ARGS`); run directly
# on a disk server, each script sources this file from its own directory instead.
#
# Conventions on a disk server:
#   /etc/xenaoe/exports/eS.L.conf       persisted export (key=value lines), what restore starts
#   /run/xenaoe/vblade/eS.L.pid          pid of the vblade serving eS.L
#   /var/log/xenaoe/vblade-eS.L.log      that vblade's output
# Exit codes: 0 done, 3 refused (bad input or a conflict: retrying cannot help), 4 temporary
# (busy or slow: try again), anything else unexpected.

XENAOE_VBLADE_LIB=1
EXPORTS_DIR=/etc/xenaoe/exports
PID_DIR=/run/xenaoe/vblade
LOG_DIR=/var/log/xenaoe
EX_REFUSED=3
EX_TEMPORARY=4
# vblade keeps at most 32 MACs in its ACL and does not check the bound (aoe.c Nmasks).
MAX_MACS=32

die() {
	die_code=$1
	shift
	printf '%s\n' "$*" >&2
	exit "$die_code"
}

# Serialise every change on this host (panel workers, an operator, the boot-time restore).
take_lock() {
	mkdir -p "$EXPORTS_DIR" "$PID_DIR" "$LOG_DIR" || die 1 "cannot create the xenaoe directories"
	exec 9>"$PID_DIR/.lock"
	flock -w 10 9 || die "$EX_TEMPORARY" "another export change on this host is still running"
}

valid_number() {  # $1 value, $2 maximum
	case $1 in '' | *[!0-9]*) return 1 ;; esac
	# No more digits than the maximum has, before any arithmetic: a longer number would overflow
	# the shell's integers (and compare wrong) instead of being refused.
	[ "${#1}" -le "${#2}" ] && [ "$1" -le "$2" ]
}

valid_spec() {  # shelf slot interface path macs
	valid_number "$1" 65534 || { echo "bad shelf: $1" >&2; return 1; }
	valid_number "$2" 254 || { echo "bad slot: $2" >&2; return 1; }
	case $3 in
	'' | -* | *[!A-Za-z0-9_.:@-]*) echo "bad interface name: $3" >&2; return 1 ;;
	esac
	case $4 in
	/*) ;;
	*) echo "backing path must be absolute: $4" >&2; return 1 ;;
	esac
	case $5 in
	*[!0-9a-f:,]*) echo "bad MAC list: $5" >&2; return 1 ;;
	esac
}

# Parse /proc/PID/cmdline of a vblade started by start_vblade: `vblade [-r] [-m MACS] S L IFACE FILE`.
# Sets cmd_ro (1: read-only, else 0) cmd_macs cmd_shelf cmd_slot cmd_iface cmd_path; fails for anything else.
read_cmdline() {
	[ -r "/proc/$1/cmdline" ] || return 1
	rc_ifs=$IFS
	IFS='
'
	set -f
	# shellcheck disable=SC2046 # splitting on newlines (paths never contain one) is the point
	set -- $(tr '\0' '\n' <"/proc/$1/cmdline")
	set +f
	IFS=$rc_ifs
	[ $# -ge 5 ] && [ "${1##*/}" = vblade ] || return 1
	shift
	cmd_ro=0
	if [ "$1" = -r ]; then
		cmd_ro=1
		shift
	fi
	cmd_macs=
	if [ "$1" = -m ]; then
		shift
		# vblade cuts its -m argument in place (each comma becomes a NUL), so /proc shows one
		# argument per MAC.
		while [ $# -gt 4 ]; do
			cmd_macs=${cmd_macs:+$cmd_macs,}$1
			shift
		done
	fi
	[ $# -eq 4 ] || return 1
	cmd_shelf=$1 cmd_slot=$2 cmd_iface=$3 cmd_path=$4
}

# Print the pid of our vblade for $1 (eS.L) if it runs. A pid file can outlive its process and the
# pid be reused; lab hosts even share one PID namespace. So the process counts as ours only if it
# is a vblade for that shelf.slot in this host's network namespace. Never scan other processes.
running_pid() {
	[ -f "$PID_DIR/$1.pid" ] || return 1
	read -r rp_pid <"$PID_DIR/$1.pid" || return 1
	case $rp_pid in '' | *[!0-9]*) return 1 ;; esac
	rp_ns=$(readlink "/proc/$rp_pid/ns/net" 2>/dev/null) || return 1
	[ "$rp_ns" = "$(readlink /proc/self/ns/net)" ] || return 1
	read_cmdline "$rp_pid" || return 1
	[ "e$cmd_shelf.$cmd_slot" = "$1" ] || return 1
	printf '%s\n' "$rp_pid"
}

# One tab-separated line per running export, the format vblade.py parses:
# shelf slot interface path pid macs read-only(0|1)
print_running() {  # $1 = eS.L
	pr_pid=$(running_pid "$1") || return 1
	read_cmdline "$pr_pid" || return 1
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$cmd_shelf" "$cmd_slot" "$cmd_iface" "$cmd_path" "$pr_pid" "$cmd_macs" \
		"$cmd_ro"
}

# Sets conf_shelf conf_slot conf_iface conf_path conf_macs conf_ro from a config file; fails if invalid.
# A config without a readonly line (written before read-only exports existed) is read-write.
read_conf() {
	conf_shelf= conf_slot= conf_iface= conf_path= conf_macs= conf_ro=0
	while IFS= read -r rc_line || [ -n "$rc_line" ]; do
		case $rc_line in
		shelf=*) conf_shelf=${rc_line#shelf=} ;;
		slot=*) conf_slot=${rc_line#slot=} ;;
		interface=*) conf_iface=${rc_line#interface=} ;;
		path=*) conf_path=${rc_line#path=} ;;
		macs=*) conf_macs=${rc_line#macs=} ;;
		readonly=*) conf_ro=${rc_line#readonly=} ;;
		esac
	done <"$1"
	case $conf_ro in 0 | 1) ;; *) echo "bad readonly: $conf_ro" >&2; return 1 ;; esac
	valid_spec "$conf_shelf" "$conf_slot" "$conf_iface" "$conf_path" "$conf_macs"
}

# Written to a temporary file and renamed, so that a crash never leaves half a config behind.
write_conf() {  # shelf slot interface path macs read-only(0|1)
	wc_file=$EXPORTS_DIR/e$1.$2.conf
	{
		echo "# Written by the XenAoE panel; started at boot by restore-exports.sh."
		echo "shelf=$1"
		echo "slot=$2"
		echo "interface=$3"
		echo "path=$4"
		echo "macs=$5"
		echo "readonly=${6:-0}"
	} >"$wc_file.tmp" && mv -f "$wc_file.tmp" "$wc_file"
}

# Start vblade detached: its own session, no terminal, all three streams redirected. Anything left
# holding the SSH channel would hang the panel's session (as vbladed does). The pid file is
# written by the process itself just before it becomes vblade, so it is right even if setsid forks.
# `sleep 0.1` needs a sleep that takes fractions (coreutils, busybox), as on every Debian host.
start_vblade() {  # shelf slot interface path macs [read-only: 1]
	sv_name=e$1.$2
	sv_pidfile=$PID_DIR/$sv_name.pid
	sv_log=$LOG_DIR/vblade-$sv_name.log
	if [ ! -e "$4" ]; then
		echo "$sv_name: backing file $4 does not exist" >&2
		return "$EX_REFUSED"
	fi
	rm -f "$sv_pidfile"
	sv_ro=${6:-0}
	echo "$(date '+%Y-%m-%dT%H:%M:%S') starting $sv_name: interface $3, file $4, macs ${5:-any}," \
		"$([ "$sv_ro" = 1 ] && echo read-only || echo read-write)" >>"$sv_log"
	if [ -n "$5" ]; then
		set -- -m "$5" "$1" "$2" "$3" "$4"
	else
		set -- "$1" "$2" "$3" "$4"
	fi
	[ "$sv_ro" = 1 ] && set -- -r "$@"
	# 9>&-: the lock's descriptor must not live on in vblade, or the lock would never be released.
	setsid sh -c 'echo $$ >"$0" && exec vblade "$@"' "$sv_pidfile" "$@" </dev/null >>"$sv_log" 2>&1 9>&- &
	# vblade prints "pid N: eS.L, ..." once it has opened the file and the interface; it exits at
	# once when either fails. Wait for one or the other (3 s at most).
	sv_i=0
	while [ "$sv_i" -lt 30 ]; do
		if sv_pid=$(running_pid "$sv_name"); then
			grep -q "^pid $sv_pid: " "$sv_log" && return 0
		elif [ -s "$sv_pidfile" ] && ! kill -0 "$(cat "$sv_pidfile")" 2>/dev/null; then
			break
		fi
		sleep 0.1
		sv_i=$((sv_i + 1))
	done
	if sv_pid=$(running_pid "$sv_name"); then
		# Running but silent: leave it, the caller sees it in the list; vblade may be slow to open.
		return 0
	fi
	# Whatever runs under that pid (written by our own `sh -c` a moment ago) must not stay behind.
	[ -s "$sv_pidfile" ] && kill "$(cat "$sv_pidfile")" 2>/dev/null
	rm -f "$sv_pidfile"
	echo "$sv_name: vblade did not start: $(tail -n 3 "$sv_log" | tr '\n' ' ')" >&2
	return "$EX_REFUSED"
}

exit_state() {  # pid: "gone", "zombie" or "running"
	es_state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)
	case $es_state in '') echo gone ;; Z | X) echo zombie ;; *) echo running ;; esac
}

stop_vblade() {  # eS.L
	if sp_pid=$(running_pid "$1"); then
		kill "$sp_pid" 2>/dev/null
		sp_i=0
		while running_pid "$1" >/dev/null; do
			sp_i=$((sp_i + 1))
			if [ "$sp_i" -eq 50 ]; then
				kill -9 "$sp_pid" 2>/dev/null
			elif [ "$sp_i" -gt 80 ]; then
				echo "$1: vblade (pid $sp_pid) does not stop" >&2
				return "$EX_TEMPORARY"
			fi
			sleep 0.1
		done
		# The command line empties when the exiting vblade drops its memory, before the kernel
		# closes its socket and backing file: wait for the zombie (or nothing), 2 s at most, so
		# a start right after this one never overlaps the old export.
		sp_i=0
		while [ "$sp_i" -lt 20 ] && [ "$(exit_state "$sp_pid")" = running ]; do
			sleep 0.1
			sp_i=$((sp_i + 1))
		done
		echo "$(date '+%Y-%m-%dT%H:%M:%S') stopped $1 (pid $sp_pid)" >>"$LOG_DIR/vblade-$1.log"
	fi
	rm -f "$PID_DIR/$1.pid"
}
