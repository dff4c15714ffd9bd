"""One verdict per claim of the paper and per *reading* of it, each with the evidence it rests on.

Introduced in notebook 05. The paper's text says "patches" were blacked out; its code zeroed feature
*channels* (columns of `fc.weight`). A verdict therefore says which reading it tests:

- `"patch"`: the text's reading: patch logits dropped before the mean (this project's sweep engine);
- `"channel"`: the code's reading: `fc.weight` columns zeroed (the paper's alternating = index parity);
- `"model"`: no blackout involved (claim (a), one network against the other).

Every verdict is `{"claim", "reading", "verdict", "evidence", "caveat"}`; the thresholds are the
constants below, and every interval is named by its method (see `stats`).
"""
from __future__ import annotations

import numpy as np

from bagnet_lib.nets.metrics import bootstrap_ci, bootstrap_statistic_ci, spread, t_interval
from bagnet_lib.nets.models import model_label

COMPARABLE_MARGIN = 0.05  # (a) "comparable": the image-bootstrap interval of the difference lies within ±5 points
NO_LOSS_MARGIN = 0.01  # (c) "without loss of accuracy": the masked − full interval stays above −1 point
NULL_R2 = 0.99  # (d) the averaging null explains "almost all" of the loss curve when its R² reaches this
READINGS = {"patch": "patch logits dropped before the mean (the text's reading)",
            "channel": "fc.weight columns zeroed (the code's reading)",
            "model": "no blackout involved", "compute": "FLOPs per image"}


def _verdict(claim: str, reading: str, verdict: str, evidence: str, caveat: str = "", **numbers) -> dict:
    return {"claim": claim, "reading": reading, "verdict": verdict, "evidence": evidence, "caveat": caveat,
            "numbers": numbers}


def _ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


# --------------------------------------------------------------------------- (a)
def seed_spread_text(gaps: dict[int, float], ci: tuple[float, float], label: str) -> str:
    """The gap over training seeds in words: each seed, the mean, the sd and `ci`, the Student-t interval over seeds."""
    v = np.array(list(gaps.values()), float)
    lo, hi = ci
    each = ", ".join(f"seed {s}: {g:+.3f}" for s, g in gaps.items())
    return (f"over {v.size} training seeds ({each}) {label} − ResNet-50 = {v.mean():+.3f} on average, sd "
            f"{v.std(ddof=1):.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] (Student t over the {v.size} seeds)")


def claim_a(resnet_correct: np.ndarray, bagnet_correct: np.ndarray, pretrained: bool, bagnet: str = "bagnet33",
            seed_gaps: dict[int, float] | None = None) -> dict:
    """(a) the BagNet is comparable to ResNet-50: paired image bootstrap of the accuracy difference.

    With `seed_gaps` (the difference of each training seed of a seed study, `seeds`), the evidence also gives the
    spread over seeds, and a pretrained verdict needs both intervals (test images, seeds) within the margin.
    """
    label = model_label(bagnet)
    claim = f"(a) {label} is comparable to ResNet-50"
    diff = np.asarray(bagnet_correct, float) - np.asarray(resnet_correct, float)
    d, ci = float(diff.mean()), bootstrap_ci(diff)
    evidence = (f"test accuracy {label} − ResNet-50 = {d:+.3f}, 95% CI {_ci(ci)} (bootstrap over the "
                f"{diff.size} test images, paired)")
    numbers = {"diff": d, "ci": list(ci), "n": int(diff.size)}
    seeds = len(seed_gaps) if seed_gaps and len(seed_gaps) > 1 else 0
    hull = ci
    if seeds:
        seed_ci = t_interval(list(seed_gaps.values()))
        evidence += "; " + seed_spread_text(seed_gaps, seed_ci, label)
        numbers.update(seed_gaps={int(s): float(g) for s, g in seed_gaps.items()}, seed_ci=list(seed_ci))
        hull = (min(ci[0], seed_ci[0]), max(ci[1], seed_ci[1]))
    if not pretrained:
        runs = f"{seeds} training seeds" if seeds else "one seed"
        return _verdict(claim, "model", "not tested in the paper's setting",
                        evidence + "; trained from scratch here",
                        "the paper compared ImageNet-pretrained networks with a retrained last layer; this run "
                        f"trains both from scratch with {runs}, which tests how fast each architecture learns "
                        "from the training split alone, not the paper's comparison", **numbers)
    if -COMPARABLE_MARGIN <= hull[0] and hull[1] <= COMPARABLE_MARGIN:
        v = "supported"
    elif hull[1] < -COMPARABLE_MARGIN or hull[0] > COMPARABLE_MARGIN:
        v = "not supported"
    else:
        v = "inconclusive"
    within = "the interval lies" if not seeds else "both intervals (test images, seeds) lie"
    return _verdict(claim, "model", v, evidence + f"; 'comparable' means {within} within ±{COMPARABLE_MARGIN:.2f}",
                    **numbers)


# --------------------------------------------------------------------------- (b)
def claim_b(alternating: dict[str, float], random_half: np.ndarray, reading: str) -> dict:
    """(b) order-agnostic: each alternating mask's accuracy lies where 95 % of random 50 % masks lie."""
    band = spread(random_half)
    inside = all(band[0] <= a <= band[1] for a in alternating.values())
    alts = ", ".join(f"{k} {a:.3f}" for k, a in alternating.items())
    caveat = ("a BagNet averages a bag of patch logits, so it ignores their positions by construction: this "
              "compares two ways of choosing half of the patches and cannot show that CNNs in general are "
              "order-agnostic" if reading == "patch" else
              "channels have no order or position: index parity and a random half are two ways of choosing "
              "half of the features, so this says nothing about patches")
    return _verdict("(b) class inference is patch-order-agnostic (alternating ≈ random 50%)", reading,
                    "supported" if inside else "not supported",
                    f"{alts}; random 50%: mean {np.mean(random_half):.3f}, 95% of {len(random_half)} masks in "
                    f"[{band[0]:.3f}, {band[1]:.3f}]", caveat,
                    alternating=alternating, random50_mean=float(np.mean(random_half)), random50_spread=list(band),
                    n_masks=int(len(random_half)))


# --------------------------------------------------------------------------- (c)
def claim_c(full_correct: np.ndarray, masked_correct: np.ndarray, reading: str, drop_frac: float = 0.25) -> dict:
    """(c) 25 % can be dropped without loss: masks [M, N] against all patches [N], per mask and per image.

    The verdict rests on the paired image-bootstrap interval of (accuracy averaged over the masks) −
    (accuracy with everything kept): supported when its lower end is above −NO_LOSS_MARGIN, not
    supported when its upper end is below it, inconclusive otherwise.
    """
    full = np.asarray(full_correct, float)
    masked = np.asarray(masked_correct, float)
    per_mask = masked.mean(axis=1) - full.mean()
    diff = masked.mean(axis=0) - full  # per image: share of masks under which it is right, minus all patches
    d, ci = float(diff.mean()), bootstrap_ci(diff)
    worse = int((per_mask < -NO_LOSS_MARGIN).sum())
    if ci[0] >= -NO_LOSS_MARGIN:
        v = "supported"
    elif ci[1] < -NO_LOSS_MARGIN:
        v = "not supported"
    else:
        v = "inconclusive"
    what = "patch logits" if reading == "patch" else "fc.weight columns (feature channels)"
    return _verdict("(c) about 25% can be dropped without loss of accuracy", reading, v,
                    f"all kept {full.mean():.3f} → {int(drop_frac * 100)}% of the {what} dropped "
                    f"{masked.mean():.3f} (mean over {len(masked)} masks): masked − full = {d:+.3f}, 95% CI "
                    f"{_ci(ci)} (bootstrap over the {full.size} test images, paired); {worse} of {len(masked)} "
                    f"masks lose more than {NO_LOSS_MARGIN:.2f}; 'without loss' means the interval stays above "
                    f"−{NO_LOSS_MARGIN:.2f}",
                    "this drops outputs after the network: every patch was still computed, so nothing is saved"
                    if reading == "patch" else "the paper's code: features removed at every position, not patches",
                    full=float(full.mean()), masked=float(masked.mean()), diff=d, ci=list(ci),
                    masks_losing_more=worse, n_masks=int(len(masked)), n_images=int(full.size))


# --------------------------------------------------------------------------- (d)
def averaging_null_fit(fracs: np.ndarray, increase: np.ndarray) -> dict:
    """Fit increase(f) ≈ c·x with x = f/(1−f) (the subsampling null), and c'·x + q·x² (its residual curvature).

    `increase` is [F] (a curve) or [F, N] (per image; the curve is its mean over images). The null is what
    averaging fewer of P random patch logits does to *any* bag-of-logits model: the kept mean's variance is
    σ²·f/((1−f)P), and a smooth loss rises with that variance. q ≈ 0 means nothing is left to explain.
    """
    f = np.asarray(fracs, float)
    y = np.asarray(increase, float)
    y = y.mean(axis=1) if y.ndim == 2 else y
    x = f / (1 - f)
    c = float((x @ y) / (x @ x))
    design = np.stack([x, x**2], axis=1)
    (c2, q), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - c * x
    r2 = 1 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if np.ptp(y) > 0 else 1.0
    return {"c": c, "r2": r2, "c_with_q": float(c2), "q": float(q)}


def _bootstrap_fit(fracs: np.ndarray, per_image: np.ndarray) -> dict:
    """`averaging_null_fit` with percentile intervals for c and q from resampled test images ([F, N] input)."""
    point = averaging_null_fit(fracs, per_image)
    for key in ("c", "q"):
        point[f"{key}_ci"] = list(bootstrap_statistic_ci(
            per_image.shape[1], lambda idx, k=key: averaging_null_fit(fracs, per_image[:, idx])[k]))
    return point


def claim_d(fracs: np.ndarray, loss_mean: np.ndarray, loss_zero: np.ndarray, temperature_null: np.ndarray,
            acc_drop: np.ndarray) -> dict:
    """(d) loss grows non-linearly with the fraction dropped, against its nulls.

    `loss_mean`, `loss_zero`, `acc_drop`: per-image increases [F, N] over all-patches (each averaged over
    the masks of that fraction), for fractions `fracs` > 0; `temperature_null` [F]: the loss increase of
    the all-patch logits scaled by (1 − f), which is what `zero` aggregation does to the logits on average.
    """
    fracs = np.asarray(fracs, float)
    fit = _bootstrap_fit(fracs, np.asarray(loss_mean, float))
    acc = _bootstrap_fit(fracs, np.asarray(acc_drop, float))
    zero = np.asarray(loss_zero, float).mean(axis=1)
    half = int(np.argmin(np.abs(fracs - 0.5)))
    explained = float(temperature_null[half] / zero[half]) if zero[half] > 0 else float("nan")
    curved = not (fit["q_ci"][0] <= 0 <= fit["q_ci"][1])
    if fit["c_ci"][0] <= 0:  # the loss does not rise measurably with the fraction dropped
        verdict = "not supported: the loss does not rise measurably with the fraction dropped"
    elif not curved:
        verdict = "supported, and fully explained by averaging fewer patches"
    elif fit["r2"] >= NULL_R2:  # significant with hundreds of images, yet small next to what the null explains
        verdict = "supported, and almost fully explained by averaging fewer patches: a small residual curvature remains"
    else:
        verdict = "supported, and beyond averaging fewer patches: a residual curvature remains"
    share = (f"scaling the all-patch logits by (1 − f) alone gives {100 * explained:.0f}% of its loss increase"
             if np.isfinite(explained) else "its loss does not rise, so there is nothing for the (1 − f) temperature "
             "to explain")
    return _verdict(
        "(d) loss grows non-linearly with the fraction dropped", "patch", verdict,
        f"`mean` aggregation: loss increase ≈ c·f/(1−f) with c = {fit['c']:.4f} (95% CI [{fit['c_ci'][0]:.4f}, "
        f"{fit['c_ci'][1]:.4f}], bootstrap over test images), R² = {fit['r2']:.3f}; residual curvature q = "
        f"{fit['q']:+.5f} (95% CI [{fit['q_ci'][0]:+.5f}, {fit['q_ci'][1]:+.5f}]); accuracy drop ≈ "
        f"{acc['c']:.4f}·f/(1−f) (R² = {acc['r2']:.3f}, q CI [{acc['q_ci'][0]:+.5f}, {acc['q_ci'][1]:+.5f}]). "
        f"`zero` aggregation: at {100 * fracs[half]:.0f}% dropped, {share}",
        "averaging fewer random patch logits raises the loss like f/(1−f) for any bag-of-logits model, and "
        "`zero` shrinks the logits by (1 − f) (a temperature): 'non-linear' alone is expected by construction; "
        "the finding is what remains after these",
        mean_fit=fit, accuracy_fit=acc, zero_temperature_share_at_half=explained)


# --------------------------------------------------------------------------- (e)
def claim_e(points: list[dict], correct: dict[int, np.ndarray], costs: dict, bagnet: str = "bagnet33") -> dict:
    """(e) the efficiency premise: does dropping patches buy the same accuracy for fewer FLOPs?

    `points` are the frontier's configurations (see `frontier`), `correct[i]` point i's per-image
    correctness (averaged over masks). Baselines: the dense BagNet, the BagNet and ResNet-50 on fewer
    pixels (their dense points included). A patch-dropping configuration X *saves* compute when some
    dearer baseline is not significantly more accurate than X (paired image-bootstrap 95 % interval of
    acc_X − acc_B reaches 0 or above), and every baseline at X's cost or below is significantly less
    accurate than X. `costs`: seconds per epoch and GFLOPs per image of both networks, for the evidence.
    """
    is_base = [pt["method"] in ("dense", "fewer pixels (dense)") for pt in points]
    base = [i for i, b in enumerate(is_base) if b]
    savers = []
    for x, pt in enumerate(points):
        if is_base[x]:
            continue
        diff = {b: bootstrap_ci(np.asarray(correct[x], float) - np.asarray(correct[b], float)) for b in base}
        dearer_matched = [b for b in base if points[b]["gflops_per_image"] > pt["gflops_per_image"] and diff[b][1] >= 0]
        cheaper_all_worse = all(diff[b][0] > 0 for b in base if points[b]["gflops_per_image"] <= pt["gflops_per_image"])
        if dearer_matched and cheaper_all_worse:
            b = min(dearer_matched, key=lambda i: points[i]["gflops_per_image"])
            savers.append((points[b]["gflops_per_image"] / pt["gflops_per_image"], x, b, diff[b]))
    name = lambda p: f"{p['model']} {p['method']} ({p['parameter']})"  # noqa: E731
    cost_text = (f"Measured by this run: {bagnet} {costs['bagnet_gflops']:.2f} vs ResNet-50 {costs['resnet_gflops']:.2f} "
                 f"GFLOPs per image (dense, forward), {costs['bagnet_epoch_s']:.0f} vs {costs['resnet_epoch_s']:.0f} s "
                 "per training epoch (median)")
    caveat = ("FLOPs count convolutions and matrix products only; wall time also depends on how well the small "
              "crops of a sparse pass use the machine (see `bench sparse`)")
    if savers:
        ratio, x, b, ci = max(savers)
        return _verdict("(e) dropping patches saves computation at equal accuracy", "compute", "supported",
                        f"{name(points[x])}: accuracy {points[x]['acc']:.3f} at {points[x]['gflops_per_image']:.3f} "
                        f"GFLOPs per image, against {name(points[b])}: {points[b]['acc']:.3f} at "
                        f"{points[b]['gflops_per_image']:.3f} ({ratio:.1f}× the FLOPs; paired difference 95% CI "
                        f"[{ci[0]:+.3f}, {ci[1]:+.3f}]), and every baseline at its cost or below is less accurate. "
                        + cost_text, caveat, n_saving=len(savers), best=[int(x), int(b)], ratio=float(ratio))
    cheapest = min(base, key=lambda i: points[i]["gflops_per_image"])
    return _verdict("(e) dropping patches saves computation at equal accuracy", "compute", "not supported",
                    f"no patch-dropping configuration beats the baselines: each is matched or beaten by a dense or "
                    f"downscaled network at no more FLOPs (the cheapest baseline, {name(points[cheapest])}, reaches "
                    f"{points[cheapest]['acc']:.3f} at {points[cheapest]['gflops_per_image']:.3f} GFLOPs). " + cost_text,
                    caveat, n_saving=0)
