#!/bin/sh
# Installs the Debian packages EdgeCascade needs when they are missing:
# mosquitto (the MQTT broker), dataset-fashion-mnist (the default data set),
# postgresql (its server binaries: the tests run the cloud's database on a throw-away
# cluster too), chromium (the dashboard's tests drive it headless) and python3-venv.
# Prints what to run instead when it cannot install them.
set -u
missing=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing="$missing dataset-fashion-mnist"
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$missing python3-venv"
[ -z "$missing" ] && exit 0

echo "installing Debian packages:$missing"
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: cannot install$missing here (needs root on Debian)." >&2
    echo "       run as root: apt-get update && apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
    echo "error: apt-get could not install$missing; check the package sources and try again." >&2
    exit 1
fi
