"""lowp under torch.distributed, two CPU processes (gloo, a file rendezvous: no network): each rank calibrates a
prepared model on its own batches, and every rank converts to the same int8 model — for min / max observers the
model one process calibrated on all the batches gives; a QAT model trained under FSDP2's fully_shard converts on
every rank to one ordinary model. Backend-agnostic: the same code runs on NCCL ranks with a GPU each. Bounded in
time (the ranks' collectives time out after 60 s, each test gives up after 180)."""

import pytest
import torch
import torch.distributed as dist

import lowp_ops
from lowp_ops import quant
from util import RANKS, SmallNet, assert_bitwise_equal, spawn_ranks, trained_batchnorms

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
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
    mine = _batches()[rank::RANKS]
    for observer in OBSERVERS:
        torch.save(_convert(observer, mine), f"{folder}/{observer}-{rank}.pt")
    # QAT: each rank's input observers average its own batches; reduced by convert, the ranks convert alike
    qat = lowp_ops.prepare_qat(_model()).train()
    for x in mine:
        qat(x)
    torch.save(lowp_ops.convert(qat.eval(), process_group=dist.group.WORLD).state_dict(),
               f"{folder}/qat-{rank}.pt")
    # an observer that saw nothing on one rank takes the other's range; a left-out batch counts everywhere
    obs = quant.MinMaxObserver(quant.per_channel(axis=1))
    if rank == 0:
        obs(torch.arange(12.0).reshape(4, 3) - 5)
    else:
        with pytest.warns(UserWarning, match="NaN or inf"):
            obs(torch.full((4, 3), torch.nan))
    lowp_ops.sync_observers(torch.nn.Sequential(obs))
    torch.save({"min": obs.min_val, "max": obs.max_val, "bad": obs.nonfinite_batches}, f"{folder}/one-{rank}.pt")


def test_ranks_calibrated_on_their_own_batches_convert_to_one_model(tmp_path):
    spawn_ranks(_rank, tmp_path)
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


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))


def _sharded_qat():
    """A QAT model with each Linear and the whole sharded by FSDP2, and its optimizer."""
    from torch.distributed.fsdp import fully_shard

    model = lowp_ops.prepare_qat(_mlp())
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def _fsdp_rank(rank: int, folder: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    model, optimizer = _sharded_qat()
    gen = torch.Generator().manual_seed(rank)  # each rank its own batches: its own input observers' averages
    batches = [torch.randn(4, 16, generator=gen) for _ in range(4)]

    def step(model, optimizer, x) -> float:
        loss = model(x).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    step(model, optimizer, batches[0]), step(model, optimizer, batches[1])
    with pytest.raises(ValueError, match="convert: a model sharded by FSDP .* cannot be converted in place"):
        lowp_ops.convert(model, inplace=True)
    converted = lowp_ops.convert(model)
    assert not any(type(p).__name__ == "DTensor" for p in converted.state_dict().values())
    # the way out before: the full state dict into a fresh prepare_qat model, its observers synced
    fresh = lowp_ops.prepare_qat(_mlp())
    fresh.load_state_dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True)))
    expected = lowp_ops.convert(lowp_ops.sync_observers(fresh))
    torch.save({"converted": converted.state_dict(), "expected": expected.state_dict(),
                "out": converted(torch.ones(2, 16))}, f"{folder}/fsdp-{rank}.pt")
    # a float model trained sharded quantizes too (quantize_dynamic gathers it the same way)
    float_model = _mlp()
    fully_shard(float_model)
    dynamic = lowp_ops.quantize_dynamic(float_model)
    assert_bitwise_equal(dynamic[0].qweight, lowp_ops.quantize_dynamic(_mlp())[0].qweight)
    # torch.distributed.checkpoint: observers synced before saving (a checkpoint holds one copy of each
    # buffer), training resumes bit for bit
    lowp_ops.sync_observers(model)
    state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": state, "optim": optim_state}, checkpoint_id=f"{folder}/checkpoint")
    went_on = [step(model, optimizer, x) for x in batches[2:]]
    resumed, resumed_optimizer = _sharded_qat()
    state, optim_state = get_state_dict(resumed, resumed_optimizer)  # shapes to load into: fresh observers too
    loaded = {"model": state, "optim": optim_state}
    dcp.load(loaded, checkpoint_id=f"{folder}/checkpoint")
    set_state_dict(resumed, resumed_optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    assert [step(resumed, resumed_optimizer, x) for x in batches[2:]] == went_on
    assert type(model[0].weight).__name__ == "DTensor"  # the sharded model trained on after convert


def test_a_qat_model_under_fsdp2_converts_on_every_rank_to_one_ordinary_model(tmp_path):
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (fully_shard) is not in this torch")
    spawn_ranks(_fsdp_rank, tmp_path)
    ranks = [torch.load(tmp_path / f"fsdp-{r}.pt") for r in range(RANKS)]
    for key, value in ranks[0]["converted"].items():
        assert_bitwise_equal(value, ranks[0]["expected"][key])
        assert_bitwise_equal(ranks[1]["converted"][key], value)
    assert_bitwise_equal(ranks[1]["out"], ranks[0]["out"])



def _training_rank(rank: int, folder: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(7)
    teacher = torch.nn.Linear(16, 8)
    gen = torch.Generator().manual_seed(rank)  # each rank its own batches of one regression problem
    data = [torch.randn(16, 16, generator=gen) for _ in range(4)]
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    results = {}
    for name in ("ddp qat", "ddp fp16", "fsdp qat", "fsdp fp16", "fsdp qat bf16", "fsdp fp16 bf16"):
        float_model = _mlp()
        model = lowp_ops.prepare_qat(float_model) if "qat" in name else lowp_ops.to_fp16(float_model)
        if name.startswith("ddp"):
            model = DistributedDataParallel(model)
        else:
            policy = {"mp_policy": bf16} if "bf16" in name else {}
            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, **policy)
            fully_shard(model, **policy)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu") if name == "ddp fp16" else None  # mixed precision's loss scaling
        losses = []
        for _ in range(20):
            for x in data:
                loss = (model(x).float() - teacher(x).detach()).square().mean()
                (scaler.scale(loss) if scaler else loss).backward()
                scaler.step(optimizer) if scaler else optimizer.step()
                if scaler:
                    scaler.update()
                optimizer.zero_grad()
                losses.append(loss.item())
        weights = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        results[name] = (losses, torch.cat([w.detach().float().flatten() for w in weights]))
    torch.save(results, f"{folder}/training-{rank}.pt")


def test_qat_and_fp16_models_train_under_ddp_and_fsdp2(tmp_path):
    """DDP around prepare_qat / to_fp16 (with GradScaler) and FSDP2's fully_shard (with and without a bf16
    MixedPrecisionPolicy): the loss falls, and the ranks hold the same weights."""
    spawn_ranks(_training_rank, tmp_path)
    ranks = [torch.load(tmp_path / f"training-{r}.pt") for r in range(RANKS)]
    for name, (losses, weights) in ranks[0].items():
        first, last = sum(losses[:4]), sum(losses[-4:])
        assert last < 0.5 * first, (name, first, last)
        assert_bitwise_equal(ranks[1][name][1], weights)
