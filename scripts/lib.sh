# Shared by scripts/demo and scripts/test: install Debian packages and the Python environment.
# Sourced, not run. Works on a fresh Debian 12 as root, and is a quick no-op when all is in place.

set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing Debian packages: ${missing[*]}"
    [ "$(id -u)" -eq 0 ] || { echo "need root to install ${missing[*]}" >&2; exit 1; }
    # Packages such as postgresql or tftpd-hpa start a host service when installed; bootforge runs its
    # own instances inside its tests, so service starts are refused while installing.
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && own_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    [ "$own_policy" -eq 1 ] && rm -f "$policy"
    # policy-rc.d only refuses the start now; the units stay enabled for the host's next boot, where
    # an empty tgtd or a DHCP server would listen on the host's interfaces. Only what we installed.
    local pkg unit
    for pkg in "${missing[@]}"; do
        case "$pkg" in
            tgt|kea-dhcp4-server|kea-dhcp6-server|isc-dhcp-server|tftpd-hpa|postgresql) unit="$pkg" ;;
            nginx-light) unit=nginx ;;
            *) continue ;;
        esac
        command -v systemctl >/dev/null && systemctl disable --quiet "$unit" 2>/dev/null || true
    done
    return 0
}

python_env() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$REPO$extras"
}
