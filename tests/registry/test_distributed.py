"""Calibration under torch.distributed: two CPU processes (gloo, a file rendezvous: no network) each calibrate a
prepared model on their own batches, and every rank converts to the same int8 model — for min / max observers the
model one process calibrated on all the batches gives. Backend-agnostic: the same code runs on NCCL ranks with a
GPU each. Bounded in time (the ranks' collectives time out after 60 s, the test gives up after 180)."""

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lowp_ops
from lowp_ops import quant
from util import SmallNet, assert_bitwise_equal, trained_batchnorms

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
RANKS = 2
OBSERVERS = ("minmax", "mse", "moving_average")


def _model():
    torch.manual_seed(0)
    return trained_batchnorms(SmallNet())


def _batches():
    """Four calibration batches of different ranges: rank r calibrates on batches r, r + 2."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 1, 12, 12, generator=gen) * (1 + i) for i in range(4)]


def _convert(observer: str, batches) -> dict:
    prepared = lowp_ops.prepare(_model(), lowp_ops.Int8StaticConfig(observer=observer))
    lowp_ops.calibrate(prepared, batches, progress=False)
    return lowp_ops.convert(prepared).state_dict()


def _rank(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=RANKS,
                            timeout=timedelta(seconds=60))
    try:
        torch.set_num_threads(1)
        mine = _batches()[rank::RANKS]
        for observer in OBSERVERS:
            torch.save(_convert(observer, mine), f"{folder}/{observer}-{rank}.pt")
        # QAT: each rank's input observers average its own batches; synced, the ranks convert alike
        qat = lowp_ops.prepare_qat(_model()).train()
        for x in mine:
            qat(x)
        lowp_ops.sync_observers(qat.eval())
        torch.save(lowp_ops.convert(qat).state_dict(), f"{folder}/qat-{rank}.pt")
        # an observer that saw nothing on one rank takes the other's range; a left-out batch counts everywhere
        obs = quant.MinMaxObserver(quant.per_channel(axis=1))
        if rank == 0:
            obs(torch.arange(12.0).reshape(4, 3) - 5)
        else:
            with pytest.warns(UserWarning, match="NaN or inf"):
                obs(torch.full((4, 3), torch.nan))
        lowp_ops.sync_observers(torch.nn.Sequential(obs))
        torch.save({"min": obs.min_val, "max": obs.max_val, "bad": obs.nonfinite_batches}, f"{folder}/one-{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ranks_calibrated_on_their_own_batches_convert_to_one_model(tmp_path):
    context = mp.start_processes(_rank, args=(str(tmp_path),), nprocs=RANKS, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish within 180 s")
    whole = _batches()
    for observer in (*OBSERVERS, "qat"):
        ranks = [torch.load(tmp_path / f"{observer}-{r}.pt") for r in range(RANKS)]
        assert ranks[0].keys() == ranks[1].keys()
        for key in ranks[0]:
            assert_bitwise_equal(ranks[1][key], ranks[0][key])
        if observer == "minmax":  # the range of every batch: what one process calibrated on all of them holds
            one = _convert(observer, whole)
            for key in one:
                assert_bitwise_equal(ranks[0][key], one[key])
    for r in range(RANKS):
        got = torch.load(tmp_path / f"one-{r}.pt")
        assert_bitwise_equal(got["min"], torch.tensor([-5.0, -4.0, -3.0]))
        assert_bitwise_equal(got["max"], torch.tensor([4.0, 5.0, 6.0]))
        assert int(got["bad"]) == 1


def test_one_process_sync_is_a_no_op():
    prepared = lowp_ops.prepare(_model())
    lowp_ops.calibrate(prepared, _batches()[:1], progress=False)
    before = {k: v.clone() for k, v in prepared.state_dict().items()}
    assert lowp_ops.sync_observers(prepared) is prepared
    for key, value in prepared.state_dict().items():
        assert_bitwise_equal(value, before[key])
    with pytest.raises(TypeError, match="sync_observers: model"):
        lowp_ops.sync_observers("model")
