#!/bin/sh
# aoe-detach.sh SHELF SLOT POLLS: make the AoE initiator forget eSHELF.SLOT (aoe-flush) and wait,
# polling every 0.2 s POLLS times at most, until /dev/etherd/eSHELF.SLOT is gone. Idempotent.
# Exit 3: aoe-flush refused; exit 4: the device is still there (in use?).
set -u
[ $# -eq 3 ] || { echo "usage: aoe-detach.sh SHELF SLOT POLLS" >&2; exit 3; }
dev=/dev/etherd/e$1.$2
[ -e "$dev" ] || exit 0
# aoe-flush prints some of its errors on stdout
if ! out=$(aoe-flush "e$1.$2" 2>&1); then
	[ -e "$dev" ] || exit 0
	echo "aoe-flush e$1.$2 failed: $out" >&2
	exit 3
fi
i=0
while [ -e "$dev" ]; do
	if [ "$i" -ge "$3" ]; then
		echo "$dev is still present after aoe-flush (in use?)" >&2
		exit 4
	fi
	sleep 0.2
	i=$((i + 1))
done
