#!/usr/bin/env bash
# Installs the Debian 12 packages Switchboard needs, only when one is missing.
#   tools/deps.sh          what building and running needs
#   tools/deps.sh test     also what the tests and benchmarks need
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libboost1.81-dev libboost-program-options1.81-dev libboost-filesystem1.81-dev libboost-url1.81-dev libssl-dev
  libyaml-cpp-dev nlohmann-json3-dev libsqlitecpp-dev libsqlite3-dev libspdlog-dev libhiredis-dev prometheus-cpp-dev libsystemd-dev
  libmimalloc-dev
)
if [[ "${1:-}" == "test" ]]; then
  packages+=(catch2 libbenchmark-dev inspircd ngircd redis-server chromium)
  command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)  # tests/compat
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "tools/deps.sh: installing ${missing[*]}" >&2
sudo=()
[[ $(id -u) -ne 0 ]] && sudo=(sudo)
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
