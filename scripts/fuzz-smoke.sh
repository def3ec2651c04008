#!/usr/bin/env bash
# Short fuzz run of every policy fuzz target (policy/fuzz), as CI does:
#   scripts/fuzz-smoke.sh            # 30 s per target
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh topic_parser
# Installs cargo-fuzz when it is missing. On stable Rust the sanitizer flags need
# RUSTC_BOOTSTRAP=1; set FUZZ_SANITIZER=none to build without AddressSanitizer.
# Exits non-zero when a target finds a crash (the input is kept under policy/fuzz/artifacts).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
log() { echo "fuzz-smoke.sh: $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

cd "$repo/policy"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  mapfile -t targets < <(cargo fuzz list)
fi

# The fuzz crate has its own target dir unless the caller chose one.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/policy/fuzz/target}"
export RUSTC_BOOTSTRAP=1

for target in "${targets[@]}"; do
  log "$target: building"
  cargo fuzz build --sanitizer "$sanitizer" "$target"
  log "$target: fuzzing for ${seconds}s"
  start=$SECONDS
  cargo fuzz run --sanitizer "$sanitizer" "$target" -- \
    -max_total_time="$seconds" -max_len=512 -print_final_stats=1
  log "$target: no crash in $((SECONDS - start))s"
done
