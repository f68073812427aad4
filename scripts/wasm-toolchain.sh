#!/usr/bin/env bash
# The wasm32-unknown-unknown toolchain, from Debian's packages and crates.io
# (rustup's targets are not reachable here): Debian's rustc-web builds std for
# wasm32 with -Zbuild-std, lld-22 links, wasm-bindgen-cli (the version in
# Cargo.lock) runs the tests in headless Chromium through chromedriver.
#
#   source scripts/wasm-toolchain.sh     # installs what is missing, defines wasm_env
#   scripts/wasm-toolchain.sh CMD...     # the same, then runs `wasm_env CMD...`
#
#   wasm_env cargo test  -p revalidate-web-tests "${WASM_CARGO_ARGS[@]}"
#   wasm_env cargo build -p revalidate-web-example "${WASM_CARGO_ARGS[@]}" --release
#
# Every step checks first and does nothing when it is already satisfied. All
# variables are set only in the subshell `wasm_env` runs: rustup's native
# toolchain and the native target/ are untouched.
#
# Knobs (environment):
#   WASM_TARGET_DIR        CARGO_TARGET_DIR of the wasm builds (default target/wasm32)
#   WASM_SKIP_INSTALL=1    install nothing, only define wasm_env
#   WASM_CHROME_EXTRA_ARGS more Chromium flags (e.g. --user-data-dir=DIR)
#   WASM_NPM_BINARYEN      npm binaryen version for wasm-opt (default 0: none; the
#                          size measurement sets it). Debian's binaryen 108
#                          breaks wasm-bindgen's output: never use it.
#   WASM_TIMINGS           where each install step's duration is appended

_wasm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${WASM_TARGET_DIR:=$_wasm_root/target/wasm32}"
: "${WASM_TIMINGS:=$WASM_TARGET_DIR/toolchain-timings.log}"
: "${WASM_NPM_BINARYEN:=0}"
_wasm_npm_dir="$WASM_TARGET_DIR/node-tools"
_wasm_apt_pkgs=(rustc-web cargo-web rust-web-src rust-web-clippy lld-22 chromium chromium-driver)
# The cargo flags every wasm build needs (for the scripts that source this).
# shellcheck disable=SC2034,SC2054
WASM_CARGO_ARGS=(--target wasm32-unknown-unknown -Zbuild-std=std,panic_abort)

_wasm_log() { printf '[wasm-toolchain] %s\n' "$*" >&2; }

_wasm_as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# _wasm_timed NAME CMD...: runs CMD, appends "date NAME seconds rc" to $WASM_TIMINGS.
_wasm_timed() {
    local name=$1 t0 t1 rc secs
    shift
    t0=$(date +%s.%N)
    "$@"
    rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    mkdir -p "$(dirname "$WASM_TIMINGS")"
    printf '%s\t%s\t%ss\trc=%s\n' "$(date -Is)" "$name" "$secs" "$rc" >>"$WASM_TIMINGS"
    _wasm_log "$name: ${secs}s (rc=$rc)"
    return $rc
}

_wasm_apt() {
    local p missing=()
    for p in "${_wasm_apt_pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    _wasm_log "apt: installing ${missing[*]}"
    # The image's package lists can predate rustc-web 1.96 and lld-22.
    _wasm_timed apt-get-update _wasm_as_root apt-get update -qq -o DPkg::Lock::Timeout=600 || return
    _wasm_timed "apt-get-install(${missing[*]})" _wasm_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}"
}

# The version of the `wasm-bindgen` package in Cargo.lock.
_wasm_bindgen_version() {
    awk '/^\[\[package\]\]/ { n = "" }
         /^name = / { n = $3 }
         /^version = / && n == "\"wasm-bindgen\"" { gsub(/"/, "", $3); print $3; exit }' \
        "$_wasm_root/Cargo.lock"
}

_wasm_bindgen_cli() {
    local want have
    want=$(_wasm_bindgen_version)
    [ -n "$want" ] || { _wasm_log "Cargo.lock has no wasm-bindgen"; return 1; }
    have=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{ print $2 }')
    [ "$have" = "$want" ] && return 0
    _wasm_log "wasm-bindgen-cli: have '${have:-none}', want $want: cargo install (about 2-4 min)"
    # rustup's native toolchain; not --locked: the CLI's own lock pins a
    # transitive version that crates.io no longer serves.
    _wasm_timed "cargo-install-wasm-bindgen-cli-$want" \
        env -u RUSTC -u RUSTDOC -u CARGO_TARGET_DIR -u RUSTC_BOOTSTRAP \
        cargo install --quiet wasm-bindgen-cli --version "=$want"
}

# A current wasm-opt, from npm's binaryen (it runs on node).
_wasm_npm_binaryen() {
    local want=$WASM_NPM_BINARYEN have
    [ "$want" = 0 ] && return 0
    have=$("$_wasm_npm_dir/node_modules/.bin/wasm-opt" --version 2>/dev/null | awk '{ print $3 }')
    [ "$have" = "${want%%.*}" ] && return 0
    mkdir -p "$_wasm_npm_dir"
    _wasm_timed "npm-install-binaryen-$want" \
        npm install --prefix "$_wasm_npm_dir" --no-audit --no-fund --silent "binaryen@$want"
}

# PKG NAME: PKG's /usr/bin/NAME, else its first file ending in /bin/NAME.
_wasm_pkg_bin() {
    local files
    files=$(dpkg -L "$1" 2>/dev/null | grep -E "/bin/$2\$")
    grep -qx "/usr/bin/$2" <<<"$files" && { echo "/usr/bin/$2"; return; }
    head -n1 <<<"$files"
}

# The webdriver capabilities for wasm-bindgen-test-runner: Debian's real
# chromium binary (/usr/bin/chromium is a wrapper script that chatters).
_wasm_webdriver_json() {
    local f chrome args json="" a
    chrome=$(dpkg -L chromium 2>/dev/null | grep -E '^/usr/lib/chromium/chromium$')
    [ -n "$chrome" ] || chrome=/usr/bin/chromium
    args="--headless --no-sandbox --disable-gpu --disable-quic --no-first-run"
    args+=" --disable-background-networking --disable-component-update --disable-sync"
    args+=" --disable-dev-shm-usage ${WASM_CHROME_EXTRA_ARGS:-}"
    for a in $args; do json+="${json:+, }\"$a\""; done
    # One file per set of flags, so that runs with different flags do not race.
    f=$WASM_TARGET_DIR/webdriver-$(printf '%s' "$chrome $json" | cksum | cut -d' ' -f1).json
    mkdir -p "$WASM_TARGET_DIR"
    printf '{ "goog:chromeOptions": { "binary": "%s", "args": [%s] } }\n' "$chrome" "$json" >"$f.tmp"
    mv -f "$f.tmp" "$f"
    echo "$f"
}

# wasm_env CMD...: runs CMD in a subshell set up for wasm32-unknown-unknown.
wasm_env() (
    rustc_bin=$(_wasm_pkg_bin rustc-web rustc)
    rustdoc_bin=$(_wasm_pkg_bin rustc-web rustdoc)
    cargo_bin=$(_wasm_pkg_bin cargo-web cargo)
    linker=$(command -v wasm-ld-22)
    for v in rustc_bin rustdoc_bin cargo_bin linker; do
        [ -n "${!v}" ] || { echo "wasm_env: $v not found (source scripts/wasm-toolchain.sh)" >&2; exit 127; }
    done
    export RUSTC=$rustc_bin RUSTDOC=$rustdoc_bin CARGO=$cargo_bin
    # `cargo clippy` finds its subcommand on PATH: Debian's, not rustup's.
    clippy_bin=$(_wasm_pkg_bin rust-web-clippy cargo-clippy)
    if [ -n "$clippy_bin" ]; then PATH="$(dirname "$clippy_bin"):$PATH"; fi
    # -Zbuild-std on Debian's stable compiler.
    export RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_DIR=$WASM_TARGET_DIR
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$linker
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner
    if [ -x "$_wasm_npm_dir/node_modules/.bin/wasm-opt" ]; then
        export WASM_OPT=$_wasm_npm_dir/node_modules/.bin/wasm-opt
    fi
    CHROMEDRIVER=$(command -v chromedriver)
    WASM_BINDGEN_TEST_WEBDRIVER_JSON=$(_wasm_webdriver_json)
    export CHROMEDRIVER WASM_BINDGEN_TEST_WEBDRIVER_JSON
    if [ "$1" = cargo ]; then
        shift
        exec "$cargo_bin" "$@"
    fi
    exec "$@"
)

wasm_toolchain_install() {
    [ "${WASM_SKIP_INSTALL:-0}" = 1 ] && return 0
    _wasm_apt || return
    _wasm_bindgen_cli || return
    _wasm_npm_binaryen || return
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    wasm_toolchain_install
    if [ $# -gt 0 ]; then wasm_env "$@"; fi
else
    wasm_toolchain_install
fi
