#!/bin/bash
# Issue 10 item 4, a fixed budget: Word-KD given exactly a No-KD run's compute. At the measured costs per
# update (results/converged/update_costs_2026-12-04.json: No-KD 0.757, Word-KD 1.757 CPU s) the No-KD
# row's 3,600 updates buy Word-KD 3,600 * 0.757 / 1.757 = 1,551 updates: the table's Word-KD seed-1 recipe
# ending at 1,550, scored against No-KD seed 1. Ran 2026-12-04 from a worktree at 5631107 (where this was
# one script; fixed_budget.sh now holds its steps, unchanged). Writes $RUNS/budget/word-kd-1550-tiny-seed1.
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
exec "$(dirname "$0")/fixed_budget.sh" $WORKTREE word-kd-tiny-seed1 1550 no-kd-tiny-seed1
