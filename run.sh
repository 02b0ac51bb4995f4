#!/usr/bin/env bash
# One entry point for a fresh machine: set-up is implied by every command.
#   ./run.sh demo   set up .venv, fetch yolov4-tiny weights, convert it to int8, print the report path
#   ./run.sh test   set up .venv and run the whole test suite (what CI runs)
#   ./run.sh setup  only create/refresh .venv
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

setup() {
  local stamp=.venv/.installed
  local want
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [[ -x .venv/bin/python && -f $stamp && $(cat $stamp) == "$want" ]]; then
    return 0
  fi
  echo "== setting up .venv (first run takes a few minutes)" >&2
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]" >&2
  echo "$want" > $stamp
}

demo() {
  setup
  .venv/bin/darknet2tflite --quiet weights fetch yolov4-tiny >/dev/null
  local shared="$ROOT/../shared/images/coco"
  local args=(--calibration data/samples --images data/samples)
  if [[ -d $shared ]]; then
    args=(--calibration "$shared" --eval-images "$shared" --eval-annotations "$shared/instances.json")
  fi
  .venv/bin/darknet2tflite convert cfg/yolov4-tiny.cfg weights/yolov4-tiny.weights \
    --names cfg/coco.names --out out/yolov4-tiny "${args[@]}" "$@"
}

tests() {
  setup
  # -q once: a second -q (./run.sh test -q) would hide pytest's final "N passed" line
  local quiet=(-q) a
  for a in "$@"; do
    [[ $a == -q || $a == --quiet || $a == -qq ]] && quiet=()
  done
  .venv/bin/python -m pytest "${quiet[@]}" "$@"
}

case "${1:-}" in
  setup) setup ;;
  demo) shift; demo "$@" ;;
  test) shift; tests "$@" ;;
  *) echo "usage: ./run.sh demo|test|setup" >&2; exit 2 ;;
esac
