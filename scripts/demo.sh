#!/usr/bin/env bash
# `make demo`: the lab cluster, the panel (web + workers) and an operator login.
# `make stop`: stop them and take the lab down.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
# The lab's settings (xenaoe_panel/settings_lab.py): the lab app, and the panel's SSH key and known_hosts
# from .lab/ssh. Every process started here inherits them.
export DJANGO_SETTINGS_MODULE=xenaoe_panel.settings_lab
RUN=.run
PORT=${PORT:-8000}
QUEUE=${CELERY_QUEUE:-xenaoe}  # settings.py: the default queue, and HA's own (docs/jobs.md)
HA_QUEUE=${CELERY_HA_QUEUE:-$QUEUE-ha}
mkdir -p "$RUN"

stop_pid() {  # stop a process we started, by its pid file
  local file=$1
  [ -f "$file" ] || return 0
  local pid; pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

case "${1:-start}" in
start)
  if [ "$(id -u)" != 0 ]; then echo "make demo needs root: the lab cluster creates network namespaces" >&2; exit 1; fi
  scripts/services.sh
  $PY manage.py migrate --noinput >/dev/null
  $PY manage.py collectstatic --noinput >/dev/null
  $PY manage.py lab up
  # The default image VMs boot: built from Debian packages on the first run (about 5 minutes here, with
  # a progress bar), cached after that; copied to both disk servers once (checksum verified).
  $PY manage.py image build debian-12 --default
  # An installer ISO (the lab's own, a few seconds to build): "Install from an ISO" in the wizard.
  $PY manage.py image list --json | grep -q '"name": "lab-installer"' \
    || $PY manage.py image import "$($PY manage.py lab installer-iso)" --name lab-installer --os "Lab installer"
  # A key pair for the demo's users: VMs they create let it in, from the lab's client namespace.
  [ -s "$RUN/demo-ssh/id_ed25519" ] || { mkdir -p "$RUN/demo-ssh"; ssh-keygen -q -t ed25519 -N "" -C demo@lab -f "$RUN/demo-ssh/id_ed25519"; }
  export XENAOE_VM_SSH_COMMAND="ip netns exec xa-client ssh -i $PWD/$RUN/demo-ssh/id_ed25519 {user}@{address}"
  password_file="$RUN/operator-password"
  [ -s "$password_file" ] || (umask 077; $PY -c 'import secrets; print(secrets.token_urlsafe(12))' > "$password_file")
  $PY manage.py ensure_operator operator --password-file "$password_file"
  # A tenant with a user, to see the panel as a tenant sees it (created once; kept across runs).
  tenant_password_file="$RUN/tenant-password"
  [ -s "$tenant_password_file" ] || (umask 077; $PY -c 'import secrets; print(secrets.token_urlsafe(12))' > "$tenant_password_file")
  $PY manage.py tenant show demo >/dev/null 2>&1 || $PY manage.py tenant create demo --name "Demo tenant" >/dev/null
  $PY manage.py tenant adduser demo tenant --password-file "$tenant_password_file" >/dev/null 2>&1 || true
  for user in operator tenant; do $PY manage.py sshkey add "$user" "$RUN/demo-ssh/id_ed25519.pub" >/dev/null; done
  # The token Prometheus would send to /metrics (docs/operations.md): made once, kept out of git.
  metrics_token_file="$PWD/$RUN/metrics-token"
  [ -s "$metrics_token_file" ] || (umask 077; $PY -c 'import secrets; print(secrets.token_urlsafe(32))' > "$metrics_token_file")
  export XENAOE_METRICS_TOKEN_FILE="$metrics_token_file"
  stop_pid "$RUN/worker.pid"; stop_pid "$RUN/worker-ha.pid"; stop_pid "$RUN/web.pid"; stop_pid "$RUN/watch.pid"
  stop_pid "$RUN/beat.pid"; stop_pid "$RUN/monitor.pid"; stop_pid "$RUN/vm-stats.pid"
  nohup .venv/bin/celery -A xenaoe_panel beat --loglevel=INFO \
    > "$RUN/beat.log" 2>&1 < /dev/null & echo $! > "$RUN/beat.pid"
  nohup .venv/bin/celery -A xenaoe_panel worker -P threads -c 4 -Q "$QUEUE" -n "default@%h" --loglevel=INFO \
    > "$RUN/worker.log" 2>&1 < /dev/null & echo $! > "$RUN/worker.pid"
  # High availability's worker: failover and evacuation never wait behind tenant work.
  nohup .venv/bin/celery -A xenaoe_panel worker -P threads -c 6 -Q "$HA_QUEUE" -n "ha@%h" --loglevel=INFO \
    > "$RUN/worker-ha.log" 2>&1 < /dev/null & echo $! > "$RUN/worker-ha.pid"
  nohup $PY manage.py watch_domains > "$RUN/watch.log" 2>&1 < /dev/null & echo $! > "$RUN/watch.pid"
  nohup $PY manage.py monitor > "$RUN/monitor.log" 2>&1 < /dev/null & echo $! > "$RUN/monitor.pid"
  # The guests' figures: a process of its own, never the monitor's (docs/operations.md).
  nohup $PY manage.py vm_stats > "$RUN/vm-stats.log" 2>&1 < /dev/null & echo $! > "$RUN/vm-stats.pid"
  nohup .venv/bin/daphne -b 127.0.0.1 -p "$PORT" xenaoe_panel.asgi:application \
    > "$RUN/web.log" 2>&1 < /dev/null & echo $! > "$RUN/web.pid"
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/login/" 2>/dev/null && break; sleep 0.2
  done
  cat <<TXT

XenAoE Panel is running.
  URL:      http://127.0.0.1:$PORT/
  login:    operator
  password: $(cat "$password_file")
  tenant:   tenant / $(cat "$tenant_password_file")   (a user of the tenant "demo": sees only its VMs)
  metrics:  curl -H "Authorization: Bearer \$(cat $RUN/metrics-token)" http://127.0.0.1:$PORT/metrics
Create a VM ("Create VM"): it boots Debian 12 from its mirrored disk in about half a minute; its page
shows its address and the command to log in from the lab's guest network, e.g.
  ip netns exec xa-client ssh -i $RUN/demo-ssh/id_ed25519 debian@10.214.0.100
To watch it boot and log in from the browser, tick "Also give the login user a password" in the wizard,
then "Console" (serial) or "Screen" (graphical) on the VM's page; log in as debian with that password.
From the command line: export DJANGO_SETTINGS_MODULE=xenaoe_panel.settings_lab, then .venv/bin/python manage.py ...
Logs in $RUN/ (web.log, worker.log, worker-ha.log, watch.log, monitor.log, vm-stats.log, beat.log). Stop everything with: make stop
TXT
  ;;
stop)
  stop_pid "$RUN/web.pid"
  stop_pid "$RUN/worker.pid"
  stop_pid "$RUN/worker-ha.pid"
  stop_pid "$RUN/watch.pid"
  stop_pid "$RUN/beat.pid"
  stop_pid "$RUN/monitor.pid"
  stop_pid "$RUN/vm-stats.pid"
  if [ "$(id -u)" = 0 ] && [ -x "$PY" ]; then $PY manage.py lab down; fi
  ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
