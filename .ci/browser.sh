# Sourced by .ci/run: installs Chromium and chromedriver from the distribution's packages if
# missing, starts chromedriver on 127.0.0.1, and exports the variables the browser suite reads:
#   TOWER_API_KEY_CHROMEDRIVER (its address), TOWER_API_KEY_CHROMIUM (the browser's binary).
# chromedriver is stopped when the sourcing shell exits.

DRIVER_PORT=${DRIVER_PORT:-59515}

if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  echo "installing chromium and chromium-driver from the distribution's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q chromium chromium-driver
fi
chromium --version
chromedriver --version

BROWSER_DIR=$(mktemp -d /tmp/tower-api-key-browser.XXXXXX)
chromedriver --port="$DRIVER_PORT" --allowed-ips=127.0.0.1 >"$BROWSER_DIR/chromedriver.log" 2>&1 &
DRIVER_PID=$!
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$DRIVER_PORT/status')" 2>/dev/null && break
  sleep 0.1
done
export TOWER_API_KEY_CHROMEDRIVER="http://127.0.0.1:$DRIVER_PORT"
export TOWER_API_KEY_CHROMIUM="$(command -v chromium)"

stop_browser() {
  kill "$DRIVER_PID" >/dev/null 2>&1 || true
  rm -rf "$BROWSER_DIR"
}
# Keep the servers' cleanup, if .ci/services.sh set one.
trap 'stop_browser; if declare -F stop_services >/dev/null; then stop_services; fi' EXIT
echo "chromedriver on 127.0.0.1:$DRIVER_PORT"
