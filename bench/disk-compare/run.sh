#!/bin/sh
# The comparison of docs/caching.md: budgets that hold all objects and half of them, verge and
# foyer alternately, REPS repetitions. Prints `uptime` before each run. Run from this directory
# after `cargo build --release` (CARGO_TARGET_DIR=$PWD/target). SYSTEMS picks the systems (add
# foyer-uring for foyer's io_uring engine); COLD=1 drops the page cache before each reopen (root).
set -e
OBJECTS=${OBJECTS:-20000}
READS=${READS:-100000}
REPS=${REPS:-2}
SYSTEMS=${SYSTEMS:-verge foyer}
FULL=${FULL:-1536}
HALF=${HALF:-$((FULL / 2))}
BIN=${CARGO_TARGET_DIR:-target}/release/disk-compare
DIR=${DIR:-target/disk-compare-data}
for rep in $(seq 1 "$REPS"); do
  for budget in "$FULL" "$HALF"; do
    for system in $SYSTEMS; do
      echo "== rep $rep, $system, budget $budget MiB, COLD=${COLD:-0}; $(uptime)"
      "$BIN" "$system" "$budget" "$OBJECTS" "$READS" "$DIR"
    done
  done
done
rm -rf "$DIR"
