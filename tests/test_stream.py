"""The streaming sweep: batch by batch it gives the cached sweep's numbers, resumes from its sums, and adds up
over ranks; its memory does not grow with the number of images."""
from __future__ import annotations

import pytest
import torch

from bagnet_lib.blackout.aggregate import AGGREGATIONS
from bagnet_lib.blackout.masks import MASK_KINDS
from bagnet_lib.blackout.stream import SUMS, StreamingSweep, sweep_configs
from bagnet_lib.blackout.sweep import LogitCache, sweep
from bagnet_lib.nets.distributed import eval_block, world
from tests.multiproc import two_ranks_and_one

N, K, GRID = 45, 7, (5, 6)


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, K, *GRID, generator=g) * 2, torch.randint(0, K, (N,), generator=g)


CONFIGS = sweep_configs(MASK_KINDS, [0.25, 0.5, 0.75], range(3))


def _stream(batch: int, per_image: bool = False, stop: int = N, engine: StreamingSweep | None = None,
            begin: int = 0) -> StreamingSweep:
    x, y = _logits()
    engine = engine or StreamingSweep(GRID, CONFIGS, AGGREGATIONS, per_image=N if per_image else None, chunk=11)
    for start in range(begin, stop, batch):
        end = min(start + batch, stop)
        engine.add(x[start:end], y[start:end], start=start)
    return engine


def _assert_same(a, b, exact_loss: bool = False) -> None:
    assert a[["kind", "drop_frac", "seed", "aggregation", "n_images"]].equals(b[["kind", "drop_frac", "seed",
                                                                                 "aggregation", "n_images"]])
    assert (a["acc"] == b["acc"]).all()  # from counts: exact
    if exact_loss:
        assert (a["loss"] == b["loss"]).all() and (a["kept_frac"] == b["kept_frac"]).all()
    else:  # float64 sums added in another order
        assert a["loss"].tolist() == pytest.approx(b["loss"].tolist(), rel=1e-12)
        assert a["kept_frac"].tolist() == pytest.approx(b["kept_frac"].tolist(), rel=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_batch_by_batch_equals_the_cached_sweep(per_image):
    x, y = _logits()
    cache = LogitCache(x, y, torch.zeros(N, 1), torch.zeros(K, 1), torch.zeros(K))
    cached = sweep(cache, MASK_KINDS, [0.25, 0.5, 0.75], range(3), AGGREGATIONS, per_image=per_image, chunk=11)
    streamed = _stream(batch=8, per_image=per_image).frame()  # 45 images: 5 batches of 8 and one of 5
    _assert_same(streamed[cached.columns], cached)
    assert len(cached) == len(AGGREGATIONS) * len(CONFIGS)
    assert (streamed["top5"] >= streamed["acc"]).all() and (streamed["n_images"] == N).all()
    inside = (streamed["acc_ci_low"] <= streamed["acc"]) & (streamed["acc"] <= streamed["acc_ci_high"])
    assert inside.all() and (streamed["loss_ci_low"] <= streamed["loss_ci_high"]).all()


def test_a_stream_resumed_from_its_saved_sums_ends_with_the_same_sums(tmp_path):
    straight = _stream(batch=8)
    half = _stream(batch=8, stop=24)
    torch.save(half.state_dict(), tmp_path / "partial.pt")
    resumed = StreamingSweep(GRID, CONFIGS, AGGREGATIONS, chunk=11)
    resumed.load_state_dict(torch.load(tmp_path / "partial.pt", weights_only=True))
    _stream(batch=8, engine=resumed, begin=24)
    assert torch.equal(resumed.sums, straight.sums)
    other = StreamingSweep(GRID, CONFIGS[:3], AGGREGATIONS, chunk=11)
    with pytest.raises(ValueError, match="another sweep"):
        other.load_state_dict(half.state_dict())


def test_the_sums_do_not_grow_with_the_number_of_images():
    few, many = _stream(batch=8, stop=8), _stream(batch=8)
    assert few.sums.shape == many.sums.shape == (len(AGGREGATIONS) * len(CONFIGS), len(SUMS))


def _ranked(rank: int, world_size: int):
    start, stop = eval_block(N, 8, world())  # contiguous blocks of whole batches, each image once
    engine = _stream(batch=8, stop=stop, begin=start, engine=StreamingSweep(GRID, CONFIGS, AGGREGATIONS, chunk=11))
    engine.all_reduce()
    return {"sums": engine.sums}


@pytest.mark.timeout(240)
def test_two_ranks_add_up_to_one_process(tmp_path):
    ranks, one = two_ranks_and_one(tmp_path, _ranked)
    for got in ranks:
        assert torch.equal(got["sums"][:, [0, 1, 2]], one["sums"][:, [0, 1, 2]])  # images, top-1, top-5: exact
        assert torch.allclose(got["sums"], one["sums"], rtol=1e-12, atol=0)
    assert (one["sums"][:, 0] == N).all()
