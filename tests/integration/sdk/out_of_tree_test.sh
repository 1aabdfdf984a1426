#!/usr/bin/env bash
# Installs Switchboard into a temporary prefix, builds tests/integration/sdk/hello against the installed SDK with
# its own CMake project, and runs it in the installed host: the README's "Writing a plugin" from end to end.
set -euo pipefail
build_dir=$1
source_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/tests/integration/sdk/hello" -B "$work/hello" -G Ninja \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$work/hello" >/dev/null

switchboard="$work/prefix/bin/switchboard"
"$switchboard" plugins -p "$work/hello/plugins" | grep -E "^bot +hello +1.0.0"
"$switchboard" plugins -p "$work/hello/plugins" --describe hello | grep -q greeting

mkdir -p "$work/run" && cd "$work/run"
cat > bot.yaml <<YAML
switchboard: { plugin_path: ["$work/hello/plugins"] }
store: { plugin: sqlite, path: state.db }
connections: [ { name: console, plugin: console, user: ada } ]
channels: { lobby: { connection: console, id: console } }
bots: [ { plugin: hello, greeting: hi } ]
YAML
"$switchboard" check -c bot.yaml
out=$(printf '!hello\n!hello\n' | "$switchboard" run -c bot.yaml 2>/dev/null)
echo "$out"
grep -q "<switchboard> hi, ada (1)" <<<"$out"
grep -q "<switchboard> hi, ada (2)" <<<"$out"
# the count is durable: a second run goes on from it
out=$(printf '!hello\n' | "$switchboard" run -c bot.yaml 2>/dev/null)
grep -q "<switchboard> hi, ada (3)" <<<"$out"
echo "out-of-tree plugin: ok"
