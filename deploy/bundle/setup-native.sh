#!/bin/sh
# Makes the bundle's native addons work on this machine: keeps the prebuilt ones when they load on this Node.js,
# else builds them from source with npm's node-gyp (needs a C++ compiler, make, python3 and Node's headers).
# better-sqlite3 is required; the System V shared-memory addon is optional (without it the agent refuses only
# Predict calls that pass tensors in shared memory).
set -u
here=$(cd "$(dirname "$0")" && pwd)
fail() { echo "edgefleet-agent setup: $*" >&2; exit 1; }
command -v node >/dev/null 2>&1 || fail "node is not installed; expected Node.js >= 20.19 on PATH"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
  fail "Node.js $(node --version) is too old; expected >= 20.19"

sqlite_ok() { node -e 'const D=require(process.argv[1]); new D(":memory:").close()' "$here/node_modules/better-sqlite3" 2>/dev/null; }
shm_ok() { node -e 'require(process.argv[1])' "$here/node_modules/@edgefleet/agent/native/build/Release/sysv_shm.node" 2>/dev/null; }

rebuild() {
  command -v npm >/dev/null 2>&1 || return 1
  # No download: build from source (prebuild-install would fetch a binary from GitHub). Said in prebuild-install's
  # own config file, which it looks for up from the package: npm 11 deprecates npm_config_build_from_source (an
  # npm config npm does not know), and sh drops a prebuild-install_* variable (not a valid shell name).
  printf 'buildFromSource=true\n' >"$here/.prebuild-installrc" || return 1
  (cd "$here" && npm rebuild "$1" --no-audit --no-fund --foreground-scripts >&2)
}

if ! sqlite_ok; then
  echo "edgefleet-agent setup: building better-sqlite3 for Node.js $(node --version) ($(uname -m))..." >&2
  rebuild better-sqlite3 && sqlite_ok || fail "better-sqlite3 could not be built for Node.js $(node --version).
  Install a compiler and Node's headers (Debian: apt-get install build-essential python3 libnode-dev),
  then run $here/setup-native.sh again; or use a bundle built with the same Node.js major version."
fi
# install.mjs keeps an addon of this version, rebuilds an older one (keeping it if the build fails) or builds one.
(cd "$here/node_modules/@edgefleet/agent" && node native/install.mjs)
shm_ok && echo "edgefleet-agent setup: native addons ready" >&2 ||
  echo "edgefleet-agent setup: better-sqlite3 ready; shared-memory inputs unavailable (see above)" >&2
exit 0
