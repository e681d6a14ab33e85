#!/usr/bin/env bash
# The Hex package, checked without Hex: copies exactly the files that
# mix.exs's package: lists into a temporary directory, then
#   1. a fresh `mix new` project depending on that copy by path compiles it
#      (cargo builds into the project's own _build) and calls Python;
#   2. `mix snakebridge.export_native` exports the libraries it built, and a
#      second fresh project compiles from them with no cargo anywhere;
#   3. a missing or too old cargo, and a prebuilt directory with a wrong
#      checksum or version, each fail with the error a user would get, under
#      `mix compile` and under Mix.install.
#
# Usage: test/package/check.sh (from anywhere; `make package-check`).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/snakebridge-package.XXXXXX")"
trap 'rm -rf "$work"' EXIT
pkg="$work/snakebridge"

step() { echo "==> package-check: $*"; }
fail() { echo "package-check FAILED: $*" >&2; exit 1; }

# Fails unless the command fails and its output holds every given text.
expect_failure() {
  local log="$1"; shift
  local -a texts=()
  while [ "$1" != "--" ]; do texts+=("$1"); shift; done
  shift
  if "$@" >"$log" 2>&1; then
    cat "$log"; fail "expected a failure from: $*"
  fi
  for text in "${texts[@]}"; do
    grep -qF -- "$text" "$log" || { cat "$log"; fail "the error does not say: $text"; }
  done
}

step "the package's files, from mix.exs"
cd "$repo"
# Expanded as Hex expands them: each entry is a wildcard, a directory stands
# for every file under it.
mix run --no-compile --no-start --no-deps-check -e '
  files =
    Mix.Project.config()[:package][:files]
    |> Enum.flat_map(&Path.wildcard(&1, match_dot: true))
    |> Enum.flat_map(fn path ->
      if File.dir?(path), do: Path.wildcard(Path.join(path, "**"), match_dot: true), else: [path]
    end)
    |> Enum.filter(&File.regular?/1)
    |> Enum.uniq()
  IO.puts(Enum.join(files, "\n"))
' >"$work/files"

[ -s "$work/files" ] || fail "mix.exs lists no package files"
if grep -E '^(target|_build|deps|priv|\.venv)/|(^|/)__pycache__/|\.so$' "$work/files"; then
  fail "build output in the package (above)"
fi
for required in mix.exs LICENSE Cargo.toml Cargo.lock mix_build/compile.snakebridge_native.ex \
  native/snakebridge_nif/src/lib.rs python_worker/snakebridge_worker/__main__.py; do
  grep -qx "$required" "$work/files" || fail "$required is not in the package"
done
mkdir -p "$pkg"
tr '\n' '\0' <"$work/files" | xargs -0 cp --parents -t "$pkg"
echo "$(wc -l <"$work/files") files, $(du -sk "$pkg" | cut -f1) KiB"

# A consumer project depending on the package by path.
new_consumer() {
  local dir="$work/$1"
  (cd "$work" && mix new "$1" >/dev/null)
  sed -i "s|^      # {:dep_from_hexpm.*|      {:snakebridge, path: \"$pkg\"},|" "$dir/mix.exs"
  grep -q ':snakebridge, path:' "$dir/mix.exs" || fail "could not add the dependency to $dir/mix.exs"
  echo "$dir"
}

call_python='{:ok, 4.0} = SnakeBridge.call("math", "sqrt", [16.0]); IO.puts("python says: " <> SnakeBridge.call!("platform", "python_version"))'

step "1. a fresh project compiles the package with cargo and calls Python"
app="$(new_consumer app)"
cd "$app"
start=$(date +%s)
mix compile
echo "compile from scratch: $(($(date +%s) - start)) s"
[ -d "$app/_build/snakebridge_native/target/release" ] || fail "cargo's target directory is not in the project's _build"
for built in target priv .build-stamp; do
  [ ! -e "$pkg/$built" ] || fail "the build wrote $built into the package's directory"
done
mix run -e "$call_python" | tee "$work/call.log"
grep -q "python says: 3" "$work/call.log" || fail "no answer from Python"
ls -l "$app/_build/dev/lib/snakebridge/priv/native/libsnakebridge_nif.so" \
  "$app/_build/dev/lib/snakebridge/priv/python/snakebridge_worker/_native.abi3.so"

step "2. prebuilt libraries: export them, then build with no cargo at all"
mix snakebridge.export_native "$work/prebuilt"
(cd "$work/prebuilt" && sha256sum -c SHA256SUMS)
grep -qx "snakebridge $(grep -oP '@version "\K[^"]+' "$repo/mix.exs") $(erl -noshell -eval 'io:put_chars(erlang:system_info(system_architecture)), halt().')" "$work/prebuilt/VERSION" \
  || fail "VERSION does not name the package version and architecture: $(cat "$work/prebuilt/VERSION")"

# No cargo on PATH, none in the home directory, no CARGO.
nocargo="$work/bin"
mkdir -p "$nocargo" "$work/home"
for tool in mix elixir erl sh env; do
  ln -sf "$(command -v "$tool")" "$nocargo/$tool"
done
# The interpreter itself: a pyenv shim would look for ~/.pyenv.
ln -sf "$(python3 -c 'import sys; print(sys.executable)')" "$nocargo/python3"
without_cargo() { env -u CARGO -u SNAKEBRIDGE_PREBUILT HOME="$work/home" PATH="$nocargo:/usr/bin:/bin" "$@"; }
without_cargo sh -c 'command -v cargo' && fail "cargo is still reachable in the no-cargo environment"

shipped="$(new_consumer shipped)"
cd "$shipped"
without_cargo env SNAKEBRIDGE_PREBUILT="$work/prebuilt" mix compile | tee "$work/shipped.log"
grep -q "using prebuilt native libraries" "$work/shipped.log" || fail "the prebuilt libraries were not used"
without_cargo env SNAKEBRIDGE_PREBUILT="$work/prebuilt" mix run -e "$call_python" | tee "$work/call.log"
grep -q "python says: 3" "$work/call.log" || fail "no answer from Python with prebuilt libraries"

step "3. the errors a user gets"
expect_failure "$work/err.log" "needs Rust 1.91 or newer" "cargo was not found" "rustup" -- \
  without_cargo mix deps.compile snakebridge --force
grep -q "run mix compile again" "$work/err.log" && fail "the error suggests running mix compile again"

printf '#!/bin/sh\necho "cargo 1.80.0 (0000000 2024-07-01)"\n' >"$work/old-cargo"
chmod +x "$work/old-cargo"
expect_failure "$work/err.log" "needs Rust 1.91 or newer" "is cargo 1.80.0" "rustup" -- \
  without_cargo env CARGO="$work/old-cargo" mix deps.compile snakebridge --force

cp -r "$work/prebuilt" "$work/tampered"
printf 'x' >>"$work/tampered/_native.abi3.so"
expect_failure "$work/err.log" "_native.abi3.so does not match its checksum in SHA256SUMS" "$work/tampered" -- \
  without_cargo env SNAKEBRIDGE_PREBUILT="$work/tampered" mix deps.compile snakebridge --force

cp -r "$work/prebuilt" "$work/old"
echo "snakebridge 0.0.1 $(cut -d' ' -f3 "$work/old/VERSION")" >"$work/old/VERSION"
expect_failure "$work/err.log" "it was built for \"snakebridge 0.0.1" -- \
  without_cargo env SNAKEBRIDGE_PREBUILT="$work/old" mix deps.compile snakebridge --force

# Mix.install compiles in a cache directory of its own: the same error.
expect_failure "$work/err.log" "needs Rust 1.91 or newer" "rustup" -- \
  without_cargo env MIX_INSTALL_DIR="$work/installs" \
  elixir -e "Mix.install([{:snakebridge, path: \"$pkg\"}])"
grep -q "run mix compile again" "$work/err.log" && fail "Mix.install's error suggests running mix compile again"

step "ok"
