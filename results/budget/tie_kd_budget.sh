#!/bin/bash
# Issue 10 item 4, a fixed budget: TIE-KD given exactly a Word-KD run's compute. At the measured costs per
# update (results/converged/update_costs_2026-12-04.json: Word-KD 1.757, TIE-KD with 3 passes 4.121 CPU s)
# the Word-KD row's 3,600 updates buy TIE-KD 3,600 * 1.757 / 4.121 = 1,535 updates: the table's TIE-KD
# seed-1 recipe ending at 1,535, scored against Word-KD seed 1 (the same seed at the full schedule).
# Writes $RUNS/budget/tie-kd-1535-tiny-seed1.
# Paths come from the environment: WORKTREE (a git worktree at the commit this script names), RUNS (the
# folder holding the experiment folders), MULTI30K (../shared/data/multi30k), ANCHORS (../shared/anchors).
exec "$(dirname "$0")/fixed_budget.sh" $WORKTREE tie-kd-tiny-seed1 1535 word-kd-tiny-seed1
