"""One verdict per claim of the paper and per *reading* of it, each with the evidence it rests on.

Introduced in notebook 05. The paper's text says "patches" were blacked out; its code zeroed feature
*channels* (columns of `fc.weight`). A verdict therefore says which reading it tests:

- `"patch"`: the text's reading: patch logits dropped before the mean (this project's sweep engine);
- `"channel"`: the code's reading: `fc.weight` columns zeroed (the paper's alternating = index parity);
- `"model"`: no blackout involved (claim (a), one network against the other).

Every verdict is `{"claim", "reading", "verdict", "evidence", "caveat", "numbers"}` (claim (d) adds `measure`:
loss or accuracy; claim (e) `baselines`); the thresholds are the constants below, and every interval is named by its
method (`nets.metrics`).
"""
from __future__ import annotations

import numpy as np

from bagnet_lib.nets.metrics import bootstrap_ci, bootstrap_statistic_ci, spread, t_interval
from bagnet_lib.nets.models import model_label
from bagnet_lib.writeup.paper import PAPER_TABLE1, PUBLISHED_CHANNELS

COMPARABLE_MARGIN = 0.05  # (a) "comparable": the image-bootstrap interval of the difference lies within ±5 points
NO_LOSS_MARGIN = 0.01  # (c) "without loss of accuracy": the masked − full interval stays above −1 point
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
def channel_caveat(channels: int, pretrained: bool) -> str:
    """What the channel reading here is, next to the paper's: how many channels, from scratch or pretrained."""
    paper_full, paper_25 = PAPER_TABLE1["bagnet33"]["test"]["acc"], PAPER_TABLE1["random 25%"]["acc"]
    trained = "an ImageNet-pretrained network" if pretrained else "a network trained from scratch"
    return (f"these are the {channels:,} feature channels of {trained}; the paper's were the {PUBLISHED_CHANNELS:,} channels of "
            f"an ImageNet-pretrained BagNet-33, and in its own Table 1 dropping 25 % of them cost nothing "
            f"({paper_25:.4f} against {paper_full:.4f} with all kept)")


def claim_c_text() -> str:
    """Claim (c) with its tolerance: "without loss" is read as "losing at most NO_LOSS_MARGIN"."""
    return f"(c) about 25% can be dropped without loss of accuracy (at most {100 * NO_LOSS_MARGIN:.0f} point lost)"


def _no_loss_verdict(ci) -> str:
    if ci[0] >= -NO_LOSS_MARGIN:
        return "supported"
    if ci[1] < -NO_LOSS_MARGIN:
        return "not supported"
    return "inconclusive"


def claim_c(full_correct: np.ndarray, masked_correct: np.ndarray, reading: str, drop_frac: float = 0.25,
            seed_changes: dict[int, float] | None = None, channels: int | None = None, pretrained: bool = False) -> dict:
    """(c) 25 % can be dropped without loss: masks [M, N] against all patches [N], per mask and per image.

    The verdict rests on the paired image-bootstrap interval of (accuracy averaged over the masks) −
    (accuracy with everything kept): supported when its lower end is above −NO_LOSS_MARGIN, not
    supported when its upper end is below it, inconclusive otherwise. With `seed_changes` (the same change for
    every training seed of a seed study), the same rule on the Student-t interval over the seeds gives the verdict
    over seeds, shown beside this seed's. `channels`: the channel count, for the channel reading's caveat.
    """
    full = np.asarray(full_correct, float)
    masked = np.asarray(masked_correct, float)
    per_mask = masked.mean(axis=1) - full.mean()
    diff = masked.mean(axis=0) - full  # per image: share of masks under which it is right, minus all patches
    d, ci = float(diff.mean()), bootstrap_ci(diff)
    worse = int((per_mask < -NO_LOSS_MARGIN).sum())
    what = "patch logits" if reading == "patch" else "fc.weight columns (feature channels)"
    evidence = (f"all kept {full.mean():.3f} → {int(drop_frac * 100)}% of the {what} dropped {masked.mean():.3f} (mean "
                f"over {len(masked)} masks): masked − full = {d:+.3f}, 95% CI {_ci(ci)} (bootstrap over the {full.size} "
                f"test images, paired); {worse} of {len(masked)} masks lose more than {NO_LOSS_MARGIN:.2f}; 'without "
                f"loss' means the interval stays above −{NO_LOSS_MARGIN:.2f}")
    numbers = dict(full=float(full.mean()), masked=float(masked.mean()), diff=d, ci=list(ci), masks_losing_more=worse,
                   n_masks=int(len(masked)), n_images=int(full.size))
    if seed_changes and len(seed_changes) > 1:
        v = np.array(list(seed_changes.values()), float)
        seed_ci = t_interval(v)
        seed_verdict = _no_loss_verdict(seed_ci)
        each = ", ".join(f"seed {s}: {g:+.3f}" for s, g in seed_changes.items())
        evidence += (f"; over {v.size} training seeds ({each}) the change is {v.mean():+.3f} on average, 95% CI "
                     f"{_ci(seed_ci)} (Student t over the {v.size} seeds): {seed_verdict} over seeds")
        numbers.update(seed_changes={int(s): float(g) for s, g in seed_changes.items()}, seed_ci=list(seed_ci),
                       seed_verdict=seed_verdict)
    if reading == "patch":
        caveat = "this drops outputs after the network: every patch was still computed, so nothing is saved"
    else:
        caveat = "the paper's code: features removed at every position, not patches" + (
            f"; {channel_caveat(channels, pretrained)}" if channels else "")
    return _verdict(claim_c_text(), reading, _no_loss_verdict(ci), evidence, caveat, **numbers)


# --------------------------------------------------------------------------- (d)
NULL_TOLERANCE = {"accuracy": 0.01, "loss": 0.01}  # (d) observed − null within this (1 point; 0.01 nats) = explained
D_CLAIMS = {"loss": "(d) loss rises non-linearly with the fraction dropped",
            "accuracy": "(d) accuracy falls non-linearly with the fraction dropped"}


def averaging_null_fit(fracs: np.ndarray, increase: np.ndarray) -> dict:
    """Fit increase(f) ≈ c·x with x = f/(1−f) (the leading order of the subsampling null for the loss, see
    `blackout.nulls`), and c'·x + q·x² (its residual curvature).

    `increase` is [F] (a curve) or [F, N] (per image; the curve is its mean over images). The kept mean of P random
    patch logits has variance σ²·f/((1−f)(P − 1)), and a smooth loss rises with that variance. q ≈ 0 means the
    leading order is all there is.
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


def claim_d(fracs: np.ndarray, observed: np.ndarray, null: np.ndarray, reading: str, measure: str,
            at: tuple[float, ...] = (0.25, 0.5, 0.75), temperature_share: float | None = None,
            loss_fit: dict | None = None) -> dict:
    """(d) the loss rises (accuracy falls) non-linearly with the fraction dropped, against the subsampling null.

    `observed` [F, N]: per image, the loss increase (or accuracy drop) over all kept, averaged over the random masks
    of each fraction in `fracs`; `null` [F, N]: the same under `blackout.nulls.subsampling_null` (what averaging a
    random subset of the bag does, derived there, nothing fitted). At each fraction of `at`, the paired
    image-bootstrap interval of observed − null: the null explains the curve when every interval lies within
    ±NULL_TOLERANCE[measure], and something beyond averaging acts when one lies outside it. `reading` `patch`:
    patch logits left out of the mean; `channel`: the paper's zeroed `fc.weight` columns. `temperature_share`: for
    the loss, how much of `zero` aggregation's increase the (1 − f) temperature alone gives; `loss_fit`: the c·x fit.
    """
    fracs = np.asarray(fracs, float)
    obs, nul = np.asarray(observed, float), np.asarray(null, float)
    tol = NULL_TOLERANCE[measure]
    unit = "" if measure == "accuracy" else " nats"
    named = "accuracy drop" if measure == "accuracy" else "loss increase (nats)"
    rows, explained, beyond = [], True, False
    for f in at:
        i = int(np.argmin(np.abs(fracs - f)))
        resid = obs[i] - nul[i]
        ci = bootstrap_ci(resid)
        explained &= -tol <= ci[0] and ci[1] <= tol
        beyond |= ci[0] > tol or ci[1] < -tol
        rows.append({"drop_frac": float(fracs[i]), "observed": float(obs[i].mean()), "null": float(nul[i].mean()),
                     "diff": float(resid.mean()), "ci": list(ci)})
    o, n = obs.mean(axis=1), nul.mean(axis=1)
    r2 = 1 - float(((o - n) ** 2).sum()) / float(((o - o.mean()) ** 2).sum()) if np.ptp(o) > 0 else 1.0
    top = bootstrap_ci(obs[-1])
    what = "patches" if reading == "patch" else "channels"
    if top[0] <= 0:
        verdict = f"not supported: the {measure} does not change measurably even at {100 * fracs[-1]:.0f}% dropped"
    elif explained:
        verdict = f"supported, and fully explained by averaging fewer {what}"
    elif beyond:
        verdict = f"supported, and beyond averaging fewer {what}"
    else:
        verdict = f"supported; whether averaging fewer {what} explains all of it is inconclusive"
    how = ("patch logits left out of the mean" if reading == "patch" else
           "fc.weight columns zeroed (the paper's code), against the null of a random subset of the channel "
           "contributions shrunk by kept/total")
    each = "; ".join(f"{100 * r['drop_frac']:.0f}%: {r['observed']:.3f} observed, {r['null']:.3f} null, difference "
                     f"{r['diff']:+.3f} {_ci(r['ci'])}" for r in rows)
    evidence = (f"{how}, {named} (mean over test images) — {each} (paired bootstrap over test images); over "
                f"the whole curve ({100 * fracs[0]:.0f}–{100 * fracs[-1]:.0f}%) the null's R² = {r2:.3f}; 'explained' "
                f"means every difference's interval lies within ±{tol:g}{unit}")
    if loss_fit:
        evidence += (f"; leading order c·f/(1−f) with c = {loss_fit['c']:.4f} (95% CI [{loss_fit['c_ci'][0]:.4f}, "
                     f"{loss_fit['c_ci'][1]:.4f}]), R² = {loss_fit['r2']:.3f}")
    if temperature_share is not None:
        evidence += (f"; `zero` aggregation at 50% dropped: scaling the all-kept logits by (1 − f) alone gives "
                     f"{100 * temperature_share:.0f}% of its loss increase" if np.isfinite(temperature_share) else
                     "; `zero` aggregation's loss does not rise, so the (1 − f) temperature has nothing to explain")
    caveat = ("averaging a random subset of the patch logits adds noise whose variance grows like f/(1−f): the loss "
              "responds to that variance, the accuracy to the noise against each image's margin, so 'non-linear' is "
              "expected by construction; the finding is what remains after the null"
              if reading == "patch" else
              "the code zeroes channels without rescaling, so the logits also shrink by kept/total (a temperature); "
              "the null assumes the channel contributions average like random draws, which heavy-tailed channels "
              "need not do")
    out = _verdict(D_CLAIMS[measure], reading, verdict, evidence, caveat, at=rows, null_r2=r2,
                   **({"mean_fit": loss_fit} if loss_fit else {}),
                   **({"zero_temperature_share_at_half": temperature_share} if temperature_share is not None else {}))
    out["measure"] = measure
    return out


# --------------------------------------------------------------------------- (e)
BASELINE_METHODS = ("dense", "fewer pixels (dense)")


def _point_name(p: dict) -> str:
    return f"{model_label(p['model'])} {p['method']} ({p['parameter']})"


def _within_text(points: list[dict], bagnet: str) -> str:
    """Each patch-dropping method's most accurate point next to the cheapest of the BagNet's own dense or downscaled
    passes that is at least as accurate (or, where none is, its most accurate one)."""
    own = [p for p in points if p["model"] == bagnet and p["method"] in BASELINE_METHODS]
    parts = []
    for method in dict.fromkeys(p["method"] for p in points if p["model"] == bagnet and p not in own):
        best = max((p for p in points if p["model"] == bagnet and p["method"] == method), key=lambda p: p["acc"])
        match = [p for p in own if p["acc"] >= best["acc"]]
        base = min(match, key=lambda p: p["gflops_per_image"]) if match else max(own, key=lambda p: p["acc"])
        parts.append(f"{method}: at best {best['acc']:.3f} at {best['gflops_per_image']:.3f} GFLOPs ({best['parameter']}), "
                     f"against {_point_name(base)}: {base['acc']:.3f} at {base['gflops_per_image']:.3f}")
    return "; ".join(parts)


def claim_e(points: list[dict], correct: dict[int, np.ndarray], costs: dict, bagnet: str = "bagnet33",
            within: bool = False) -> dict:
    """(e) the efficiency premise: does dropping patches buy the same accuracy for fewer FLOPs?

    `points` are the frontier's configurations (see `frontier`), `correct[i]` point i's per-image
    correctness (averaged over masks). Baselines: the dense networks and the networks on fewer pixels, of every
    model (`within=False`: ResNet-50 included) or of the BagNet alone (`within=True`: does dropping patches beat
    simply running the same BagNet on a smaller image?). A patch-dropping configuration X *saves* compute when some
    dearer baseline is not significantly more accurate than X (paired image-bootstrap 95 % interval of
    acc_X − acc_B reaches 0 or above), and every baseline at X's cost or below is significantly less
    accurate than X. `costs`: seconds per epoch and GFLOPs per image of both networks, for the evidence.
    """
    B = model_label(bagnet)
    is_base = [pt["method"] in BASELINE_METHODS and (not within or pt["model"] == bagnet) for pt in points]
    dropping = [pt["method"] not in BASELINE_METHODS and (not within or pt["model"] == bagnet) for pt in points]
    base = [i for i, b in enumerate(is_base) if b]
    savers = []
    for x, pt in enumerate(points):
        if not dropping[x]:
            continue
        diff = {b: bootstrap_ci(np.asarray(correct[x], float) - np.asarray(correct[b], float)) for b in base}
        dearer_matched = [b for b in base if points[b]["gflops_per_image"] > pt["gflops_per_image"] and diff[b][1] >= 0]
        cheaper_all_worse = all(diff[b][0] > 0 for b in base if points[b]["gflops_per_image"] <= pt["gflops_per_image"])
        if dearer_matched and cheaper_all_worse:
            b = min(dearer_matched, key=lambda i: points[i]["gflops_per_image"])
            savers.append((points[b]["gflops_per_image"] / pt["gflops_per_image"], x, b, diff[b]))
    scope = f"against {B} itself on fewer pixels" if within else "against every network here, ResNet-50 included"
    claim = f"(e) dropping patches saves computation at equal accuracy ({scope})"
    reading = f"compute, {B} only" if within else "compute"
    cost_text = (f"Measured by this run: {bagnet} {costs['bagnet_gflops']:.2f} vs ResNet-50 {costs['resnet_gflops']:.2f} "
                 f"GFLOPs per image (dense, forward), {costs['bagnet_epoch_s']:.0f} vs {costs['resnet_epoch_s']:.0f} s "
                 "per training epoch (median)")
    caveat = ("FLOPs count convolutions and matrix products only; wall time also depends on how well the small "
              "crops of a sparse pass use the machine (see `bench sparse`)")
    numbers = {"baselines": [int(i) for i in base]}
    if savers:
        ratio, x, b, ci = max(savers)
        return _verdict(claim, reading, "supported",
                        f"{_point_name(points[x])}: accuracy {points[x]['acc']:.3f} at {points[x]['gflops_per_image']:.3f} "
                        f"GFLOPs per image, against {_point_name(points[b])}: {points[b]['acc']:.3f} at "
                        f"{points[b]['gflops_per_image']:.3f} ({ratio:.1f}× the FLOPs; paired difference 95% CI "
                        f"[{ci[0]:+.3f}, {ci[1]:+.3f}]), and every baseline at its cost or below is less accurate. "
                        + cost_text, caveat, n_saving=len(savers), best=[int(x), int(b)], ratio=float(ratio), **numbers)
    if within:
        evidence = (f"no patch-dropping configuration beats {B} on fewer pixels: each is matched or beaten by {B}'s own "
                    f"dense or downscaled pass at no more FLOPs ({_within_text(points, bagnet)})")
    else:
        cheapest = min(base, key=lambda i: points[i]["gflops_per_image"])
        evidence = (f"no patch-dropping configuration beats the baselines: each is matched or beaten by a dense or "
                    f"downscaled network at no more FLOPs (the cheapest baseline, {_point_name(points[cheapest])}, "
                    f"reaches {points[cheapest]['acc']:.3f} at {points[cheapest]['gflops_per_image']:.3f} GFLOPs)")
    return _verdict(claim, reading, "not supported", f"{evidence}. {cost_text}", caveat, n_saving=0, **numbers)
