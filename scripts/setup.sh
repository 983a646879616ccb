#!/usr/bin/env bash
# Installs everything evalkit needs on a Debian/Ubuntu machine, idempotently:
# system packages (bubblewrap; QEMU, debootstrap and e2fsprogs for the microvm driver; Chromium for
# the report's browser tests), a Python
# virtual environment in .venv, evalkit itself, and the sandbox templates "base" (evals) and
# "code-interpreter" (the E2B-style SDK's default).
# Usage: scripts/setup.sh            (quiet unless something fails)
set -euo pipefail
cd "$(dirname "$0")/.."

has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

need_apt=()
has bwrap || need_apt+=(bubblewrap)
has qemu-system-x86_64 || need_apt+=(qemu-system-x86)
has debootstrap || need_apt+=(debootstrap)
has mkfs.ext4 || need_apt+=(e2fsprogs)
has chromium || need_apt+=(chromium)  # headless, for the tests that open the HTML report
[ -x /usr/bin/python3 ] || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${need_apt[*]}" >&2
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
elif ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    # the template build downloads the guest kernel with apt: it needs the package lists
    echo "setup: refreshing the apt package lists" >&2
    $sudo_cmd apt-get update -qq
fi

if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: evalkit needs Python 3.11 or newer; python3 is $(python3 --version 2>&1) (Debian 12 and Ubuntu 24.04 have it)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    python3 -m venv .venv
fi
# Reinstall only when the project's dependencies changed since the last setup.
stamp=.venv/.evalkit-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import evalkit, vmpool' >/dev/null 2>&1; then
    echo "setup: installing evalkit and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
fi

# The sandbox templates (Debian root tree and image, kernel, busybox; both drivers use them): each
# built once (base in about 40 s, code-interpreter in about 1.5 min, ~2 GB), then a cache hit that
# prints nothing. Building needs root; an ordinary user builds through sudo into their own cache
# folder (vmpool's rule for it, see vmpool._templates.cache_dir).
for template in base code-interpreter; do
    if [ -z "$sudo_cmd" ]; then
        .venv/bin/vmpool template build "$template" >/dev/null
    else
        cache="${VMPOOL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/vmpool}"
        if ! VMPOOL_CACHE_DIR="$cache" .venv/bin/vmpool template build "$template" >/dev/null 2>&1; then
            sudo env VMPOOL_CACHE_DIR="$cache" .venv/bin/vmpool template build "$template" >/dev/null
            # the user's own sandboxes write snapshots and boot archives next to it
            sudo chown -R "$(id -u):$(id -g)" "$cache"
        fi
    fi
done
