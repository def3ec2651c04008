#!/usr/bin/env bash
# Short fuzz run of every fuzz target, as CI does: the policy's (policy/fuzz: topic_parser,
# pattern_matcher) and the dataplane's (dataplane/fuzz: mqtt_packets, the MQTT front-end's
# packet path; ws_frames, the JSON frames of WebSocket streams):
#   scripts/fuzz-smoke.sh            # 30 s per target
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh topic_parser mqtt_packets
# Installs cargo-fuzz when it is missing. On stable Rust the sanitizer flags need
# RUSTC_BOOTSTRAP=1; set FUZZ_SANITIZER=none to build without AddressSanitizer.
# Exits non-zero when a target finds a crash (the input is kept under <crate>/fuzz/artifacts).
# The dataplane's targets start from the seeds committed in dataplane/fuzz/corpus/<target> and
# write what they find to dataplane/fuzz/target/corpus/<target>, leaving the seeds alone.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-30}"
sanitizer="${FUZZ_SANITIZER:-address}"
log() { echo "fuzz-smoke.sh: $*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

# Each fuzz crate (the directory holding its fuzz/) and its targets.
crates=(policy dataplane)
declare -A crate_of=()
all=()
for crate in "${crates[@]}"; do
  while read -r target; do
    crate_of[$target]=$crate
    all+=("$target")
  done < <(cd "$repo/$crate" && cargo fuzz list)
done

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=("${all[@]}")
fi
for target in "${targets[@]}"; do
  if [[ -z "${crate_of[$target]:-}" ]]; then
    log "no fuzz target $target; the targets are: ${all[*]}"
    exit 2
  fi
done

export RUSTC_BOOTSTRAP=1
# Each fuzz crate has its own target dir unless the caller chose one.
chosen_target_dir="${CARGO_TARGET_DIR:-}"

for target in "${targets[@]}"; do
  crate=${crate_of[$target]}
  cd "$repo/$crate"
  export CARGO_TARGET_DIR="${chosen_target_dir:-$repo/$crate/fuzz/target}"
  corpus=()
  max_len=512
  if [[ $crate == dataplane ]]; then
    # Room for a CONNECT with properties and a few packets after it.
    max_len=1024
    corpus=("$CARGO_TARGET_DIR/corpus/$target" "fuzz/corpus/$target")
    mkdir -p "${corpus[0]}"
  fi
  log "$target: building"
  cargo fuzz build --sanitizer "$sanitizer" "$target"
  log "$target: fuzzing for ${seconds}s"
  start=$SECONDS
  cargo fuzz run --sanitizer "$sanitizer" "$target" "${corpus[@]}" -- \
    -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1
  log "$target: no crash in $((SECONDS - start))s"
done
