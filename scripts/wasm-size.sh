#!/usr/bin/env bash
# The example page's size, and the browser read path, for BENCHMARKS.md.
#
#   scripts/wasm-size.sh            # release build, sizes, read-path bench
#
# Builds crates/revalidate-web-example for wasm32 in release with the size
# profile below (only for this build, through cargo's environment), runs
# wasm-bindgen (and npm's binaryen wasm-opt -Oz: Debian's 108 breaks the
# output), prints raw and gzip -9 sizes of each stage, lays the bench page
# out in $WASM_TARGET_DIR/size/page and runs tests/browser/read-path.mjs on it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${WASM_NPM_BINARYEN:=132.0.0}"
export WASM_NPM_BINARYEN
# shellcheck source=scripts/wasm-toolchain.sh
source scripts/wasm-toolchain.sh

export CARGO_PROFILE_RELEASE_OPT_LEVEL=z CARGO_PROFILE_RELEASE_LTO=true \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 CARGO_PROFILE_RELEASE_PANIC=abort \
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=false
wasm_env cargo build -p revalidate-web-example --lib --release "${WASM_CARGO_ARGS[@]}"
out="$WASM_TARGET_DIR/size"
rm -rf "$out" && mkdir -p "$out/page/pkg" "$out/page/vendor"
raw="$WASM_TARGET_DIR/wasm32-unknown-unknown/release/revalidate_web_example.wasm"
wasm-bindgen --target web --out-dir "$out/bindgen" "$raw"
wasm-bindgen --target web --remove-name-section --remove-producers-section --out-dir "$out/stripped" "$raw"
opt="$WASM_TARGET_DIR/node-tools/node_modules/.bin/wasm-opt"
"$opt" -Oz --enable-bulk-memory --enable-reference-types --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-multivalue \
  "$out/stripped/revalidate_web_example_bg.wasm" -o "$out/opt.wasm"

size() { printf '| %s | %s | %s |\n' "$1" "$(stat -c %s "$2")" "$(gzip -9 -c "$2" | wc -c)"; }
echo "| artifact | raw bytes | gzip -9 bytes |"
echo "|---|---|---|"
size "rustc (opt-level z, LTO, panic=abort)" "$raw"
size "wasm-bindgen --target web" "$out/bindgen/revalidate_web_example_bg.wasm"
size "… --remove-name-section --remove-producers-section" "$out/stripped/revalidate_web_example_bg.wasm"
size "… then wasm-opt -Oz (binaryen $("$opt" --version | awk '{print $3}'), npm)" "$out/opt.wasm"
size "JS glue (revalidate_web_example.js)" "$out/stripped/revalidate_web_example.js"

# The page as shipped: the wasm-opt output with its glue.
cp "$out/stripped/revalidate_web_example.js" "$out/page/pkg/"
cp "$out/opt.wasm" "$out/page/pkg/revalidate_web_example_bg.wasm"
cp crates/revalidate-web-example/www/index.html crates/revalidate-web-example/www/bench.html "$out/page/"
npm_dir=crates/revalidate-daemon/tests/browser
[ -d "$npm_dir/node_modules/@tanstack/query-core" ] || npm ci --prefix "$npm_dir" --no-audit --no-fund
cp -r "$npm_dir/node_modules/@tanstack/query-core/build/modern" "$out/page/vendor/query-core"
node "$npm_dir/read-path.mjs" "$out/page" "${READ_PATH_HITS:-100000}" "${READ_PATH_WALKS:-7}"
