#!/bin/sh
# vblade-stop.sh SHELF SLOT: stop serving eSHELF.SLOT and forget it (no restart at boot).
# Idempotent: an export that is not running or not configured is fine. The backing file stays.
set -u
[ -n "${XENAOE_VBLADE_LIB:-}" ] || . "$(dirname -- "$0")/vblade-lib.sh"

[ $# -eq 2 ] || die "$EX_REFUSED" "usage: vblade-stop.sh SHELF SLOT"
valid_number "$1" 65534 && valid_number "$2" 254 || die "$EX_REFUSED" "bad shelf.slot: $1.$2"
name=e$1.$2

take_lock
# The config goes first: if the stop fails half-way, nothing restarts the export at boot.
rm -f "$EXPORTS_DIR/$name.conf" "$EXPORTS_DIR/$name.conf.old"
stop_vblade "$name"
