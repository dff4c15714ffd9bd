"""The write-up (notebook 05): statistics into verdicts, verdicts into words.

`paper` holds the paper's printed numbers, `verdicts` tests each of its claims with intervals, `summary`
writes results/summary.json (its one writer), `seeds` the seed study (results/seeds.csv), `report` renders
REPORT.md and `readme` the generated blocks of the README and docs/. Imports the layers below it.
"""
