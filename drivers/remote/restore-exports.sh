#!/bin/sh
# restore-exports.sh: start every persisted export (/etc/xenaoe/exports/*.conf) that is not running.
#
# Run by the panel (sent on stdin after vblade-lib.sh) and at boot on a disk server, directly:
# `sh /path/to/restore-exports.sh` with vblade-lib.sh next to it (the systemd unit
# deploy/systemd/xenaoe-restore-exports.service, or the lab when a disk host boots).
# Prints one line per export it started (see print_running); a failed export does not stop the
# others; exits 3 if any failed.
set -u
[ -n "${XENAOE_VBLADE_LIB:-}" ] || . "$(dirname -- "$0")/vblade-lib.sh"

take_lock
failed=0
for conf in "$EXPORTS_DIR"/e*.conf; do
	[ -f "$conf" ] || continue
	if ! read_conf "$conf"; then
		echo "skipping $conf: invalid" >&2
		failed=$((failed + 1))
		continue
	fi
	name=e$conf_shelf.$conf_slot
	if [ "$conf" != "$EXPORTS_DIR/$name.conf" ]; then
		echo "skipping $conf: it describes $name" >&2
		failed=$((failed + 1))
		continue
	fi
	running_pid "$name" >/dev/null && continue
	if start_vblade "$conf_shelf" "$conf_slot" "$conf_iface" "$conf_path" "$conf_macs" "$conf_ro"; then
		print_running "$name"
	else
		failed=$((failed + 1))
	fi
done
[ "$failed" -eq 0 ] || die "$EX_REFUSED" "$failed export(s) could not be restored"
