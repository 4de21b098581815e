#!/usr/bin/env bash
# Runs each fuzz target (or those named) for SECONDS (default 25), seeded from
# fuzz/seeds/<target>, with its dictionary; what a run finds goes to the ignored
# fuzz/corpus/<target>, a crash to fuzz/artifacts/<target>. Exits non-zero on a crash.
#   fuzz/run.sh                 # CI's smoke run, every target
#   fuzz/run.sh 3600 ts conllu  # a long run of two targets
# Needs the nightly toolchain; installs cargo-fuzz when it is missing.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-25}
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build
mkdir -p logs
for t in "${targets[@]}"; do
  case $t in
    checkpoint_*) dict=(-dict=dicts/safetensors.dict) ;;
    ts | conllu) dict=(-dict=dicts/$t.dict) ;;
    cli_args) dict=(-dict=dicts/cli.dict) ;;
    wav) dict=(-dict=dicts/wav.dict) ;;
    *) dict=() ;;
  esac
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${secs} s"
  status=0
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- "${dict[@]}" \
    -rss_limit_mb=2048 -timeout=10 -max_total_time="$secs" >"logs/$t.log" 2>&1 || status=$?
  grep -E "DONE|ERROR|panicked|SUMMARY" "logs/$t.log" | tail -5
  if [ "$status" -ne 0 ]; then
    tail -40 "logs/$t.log"
    echo "fuzz: $t failed (log: fuzz/logs/$t.log)"
    exit 1
  fi
done
