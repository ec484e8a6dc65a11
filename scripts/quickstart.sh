#!/usr/bin/env bash
# The README's main command: on a fresh Debian/Ubuntu host (as root), install what banger
# needs, build it, start bangerd if it isn't running, and boot a VM that runs a command.
#   sudo scripts/quickstart.sh                 # runs: uname -a
#   sudo scripts/quickstart.sh -- cat /etc/os-release
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--" ] && shift
cmd=("$@")
[ ${#cmd[@]} -eq 0 ] && cmd=(uname -a)

bash scripts/install-deps.sh
export PATH=/usr/local/go/bin:$PATH
make -s build

sock=${BANGER_SOCKET:-/run/banger/bangerd.sock}
if ! bin/banger --socket "$sock" version 2>/dev/null | grep -q '^bangerd '; then
  mkdir -p /var/log/banger
  echo "starting bangerd (log: /var/log/banger/bangerd.log)" >&2
  nohup bin/bangerd --socket "$sock" >>/var/log/banger/bangerd.log 2>&1 &
  for _ in $(seq 50); do bin/banger --socket "$sock" version 2>/dev/null | grep -q '^bangerd ' && break; sleep 0.2; done
fi
# The default image (tiny) is not installed on a fresh host: vm run pulls it through the
# embedded catalog (built locally from Debian packages) and shows the auto_pull_image stage.
exec bin/banger --socket "$sock" vm run --rm -- "${cmd[@]}"
