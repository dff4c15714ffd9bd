"""The write-up's pieces that do not need a trained run."""
from __future__ import annotations

import pandas as pd

from bagnet_lib.report import compute_section, paired_accuracy_difference


def test_compute_section_reads_the_sparse_benchmark():
    text = "\n".join(compute_section({"image_size": 224, "width": 1.0, "models": {
        "bagnet9": {"break_even_keep_frac": {"flops": None, "time": 0.8}},
        "bagnet33": {"break_even_keep_frac": {"flops": 0.137, "time": 0.09}}}}))
    assert "| bagnet9 | cheaper at every fraction | 80% kept |" in text
    assert "| bagnet33 | 14% kept | 9% kept |" in text
    assert "more than 86% are blacked out" in text
    assert compute_section(None) == []


def test_paired_difference_is_exact_on_identical_and_opposite_models():
    a = pd.DataFrame({"path": [f"img{i}" for i in range(40)], "correct": [True, True, False, False] * 10})
    same = paired_accuracy_difference(a, a)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0]
    flipped = paired_accuracy_difference(a, a.assign(correct=~a["correct"]))
    assert flipped["diff"] == 0 and flipped["ci"][0] < 0 < flipped["ci"][1]
    better = paired_accuracy_difference(a, a.assign(correct=True))
    assert better["diff"] == 0.5 and better["ci"][0] > 0
