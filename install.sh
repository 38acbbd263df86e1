#!/usr/bin/env bash
# Install meshemu and everything it needs on Debian 12 / Ubuntu 22.04+ (run as root).
#
#   ./install.sh          runtime: Debian packages (mininet, iproute2, gcc, ...) + .venv with
#                         meshemu + the compiled delay line (meshemu/live/dlc, built here)
#   ./install.sh --test   also the test tools (pytest, skyfield, selenium, qemu + a
#                         netem-capable Debian kernel for the VM tests in tests/vm, chromium
#                         and chromium-driver for the browser tests in tests/browser)
#
# The browser view's JavaScript libraries and Earth data (meshemu/view/web: three, uplot,
# topojson-client, world-atlas) are installed with `npm ci` from the committed
# package-lock.json into meshemu/view/web/node_modules (Debian's nodejs and npm are
# installed for it when there is no npm).
#
# The venv is made from /usr/bin/python3 with --system-site-packages, because Debian's
# `mininet` package installs its Python module for the system interpreter only.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${MESHEMU_VENV:-$HERE/.venv}"
WITH_TEST=0
for arg in "$@"; do
    case "$arg" in
        --test) WITH_TEST=1 ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (valid: --test)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root (it installs Debian packages): sudo $0 $*" >&2
    exit 1
fi

# gcc, libc6-dev (with the kernel headers) and make build the compiled delay line;
# frr and bird2 are the routing daemons of --routing ospf|isis|bird-ospf
PKGS=(mininet iproute2 iputils-ping iperf3 ethtool tcpdump procps psmisc kmod python3 python3-venv python3-pip
      gcc libc6-dev make frr bird2)
# nodejs and npm install the browser view's libraries; an npm already there (e.g. a
# NodeSource nodejs, which bundles its own npm and conflicts with Debian's) is used as it is
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
if [ "$WITH_TEST" = 1 ]; then
    # chromium + chromium-driver: headless browser tests of the view (tests/browser)
    PKGS+=(qemu-system-x86 busybox-static kmod cpio chromium chromium-driver)
fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# meshemu runs its own FRR and BIRD instances inside the nodes (--routing ospf|isis|bird-ospf);
# the packages' system-wide services are not needed, so they are not left running.
if [ -d /run/systemd/system ]; then
    systemctl disable --now frr.service bird.service >/dev/null 2>&1 || true
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating venv $VENV (system site-packages, for Debian's mininet module)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
# cluster: Ray and pymetis, for one run over several hosts (meshemu cluster, run --cluster)
extra="[cluster]"
[ "$WITH_TEST" = 1 ] && extra="[test,cluster]"
echo "==> pip install -e .$extra"
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$HERE$extra"

WEB="$HERE/meshemu/view/web"
if ! cmp -s "$WEB/package-lock.json" "$WEB/node_modules/.meshemu-installed-lock"; then
    echo "==> npm ci in meshemu/view/web (the browser view's libraries, pinned by package-lock.json)"
    (cd "$WEB" && npm ci --no-audit --no-fund --loglevel=error) || {
        echo "install.sh: 'npm ci' in $WEB failed (see npm's messages above); 'meshemu view'" \
             "and 'meshemu run --view' need these libraries" >&2; exit 1; }
    cp "$WEB/package-lock.json" "$WEB/node_modules/.meshemu-installed-lock"
fi

echo "==> building the compiled delay line and node holder (meshemu/live/dlc)"
make -s -C "$HERE/meshemu/live/dlc" || {
    echo "install.sh: could not build the compiled delay line and node holder in" \
         "meshemu/live/dlc (see the compiler's messages above); the userspace shaper would" \
         "fall back to the slow Python delay line, and the nodes to a larger holder" >&2; exit 1; }

if [ "$WITH_TEST" = 1 ]; then
    echo "==> fetching a netem-capable Debian kernel for tests/vm"
    # tests/vm/vmkernel.py: apt-get download linux-image-<abi>-amd64 into .vm/ (idempotent)
    "$VENV/bin/python" "$HERE/tests/vm/vmkernel.py" fetch || {
        echo "install.sh: could not fetch Debian's linux-image-amd64 kernel package for the" \
             "netem tests in tests/vm (they fail without it; see the error above)" >&2; exit 1; }
fi

"$VENV/bin/python" -c "import mininet.net, meshemu" || {
    echo "install.sh: the venv cannot import mininet or meshemu" >&2; exit 1; }
echo "==> meshemu installed: $VENV/bin/meshemu"
