#!/bin/sh
# aoe-attach.sh SHELF SLOT POLLS: make /dev/etherd/eSHELF.SLOT appear on a CPU server and print it.
# Runs aoe-discover (aoetools) and polls every 0.2 s, POLLS times at most, re-running discovery
# every 2 s in case a broadcast or an answer was lost. Exit 3: discovery itself failed (no aoe
# driver or aoetools); exit 4: the device did not appear in time.
set -u
[ $# -eq 3 ] || { echo "usage: aoe-attach.sh SHELF SLOT POLLS" >&2; exit 3; }
dev=/dev/etherd/e$1.$2
i=0
while :; do
	if [ -b "$dev" ]; then
		printf '%s\n' "$dev"
		exit 0
	fi
	if [ -e "$dev" ]; then
		echo "$dev exists but is not a block device" >&2
		exit 3
	fi
	if [ $((i % 10)) -eq 0 ]; then
		out=$(aoe-discover 2>&1) || { echo "aoe-discover failed: $out" >&2; exit 3; }
	fi
	[ "$i" -lt "$3" ] || break
	sleep 0.2
	i=$((i + 1))
done
echo "$dev did not appear after discovery" >&2
exit 4
