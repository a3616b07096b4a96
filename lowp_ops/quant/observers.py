"""Calibration observers: record the range of the tensors seen, then turn it into (scale, zero_point).

An observer is an nn.Module placed where a tensor will be quantized (static activation quantization). During
calibration it sees a few batches and records statistics; calculate_qparams() then hands the chosen range to
choose_qparams, so every observer yields parameters with the same conventions, shapes and degenerate-range
handling as quantize_tensor (see qparams.py):

    per_tensor  scale () float32, zero_point () int32
    per_channel scale (C,) float32, zero_point (C,) int32, C = x.shape[axis]

per_token and per_group parameters depend on each tensor's own rows, so they are computed at run time, never
calibrated: observers reject those specs.

A batch holding NaN or ±inf is counted (buffer nonfinite_batches), left out of the range and warned about; it
never becomes a scale. calculate_qparams still answers from the finite batches (a QAT layer keeps training through
an overflowed step), but lowp_ops.convert refuses a layer whose observer counted any such batch.

>>> import torch
>>> from lowp_ops import quant
>>> obs = quant.MinMaxObserver(quant.per_tensor(8))
>>> for batch in (torch.tensor([-1.0, 0.5]), torch.tensor([2.54, 0.0])):
...     _ = obs(batch)
>>> scale, zero_point = obs.calculate_qparams()
>>> round(scale.item(), 6), zero_point.item()
(0.02, 0)
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .qparams import choose_qparams, reduce_minmax
from .spec import Granularity, QuantSpec


class Observer(torch.nn.Module):
    """Base class: records the running min / max of what it sees (buffers min_val, max_val, float32).

    Per tensor, min_val / max_val have shape () from the start, +inf / -inf until the first non-empty finite batch
    (a fresh observer's state has the shapes of a calibrated one's: torch.distributed.checkpoint loads into it). Per
    channel they have shape (0,) until the first batch gives them (C,). nonfinite_batches () int64 counts the batches
    left out for holding NaN or ±inf. State lives in buffers, so .to(device) moves it and state_dict carries it.
    Subclasses define _observe (update the buffers from one finite float32 batch) and may override _clip_range (the
    range handed to choose_qparams), and _reduce (all_reduce's step).
    """

    supported = (Granularity.PER_TENSOR, Granularity.PER_CHANNEL)

    def __init__(self, spec: QuantSpec):
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"{type(self).__name__}: spec must be a QuantSpec, got {type(spec).__name__}")
        if spec.granularity not in self.supported:
            names = " or ".join(g.value for g in self.supported)
            raise ValueError(f"{type(self).__name__}: granularity '{spec.granularity.value}' is not supported, "
                             f"use {names} (per_token / per_group parameters are computed from each tensor at "
                             f"run time, not calibrated)")
        self.spec = spec
        per_tensor = spec.granularity is Granularity.PER_TENSOR
        self.register_buffer("min_val", torch.tensor(torch.inf) if per_tensor else torch.empty(0))
        self.register_buffer("max_val", torch.tensor(-torch.inf) if per_tensor else torch.empty(0))
        self.register_buffer("nonfinite_batches", torch.zeros((), dtype=torch.int64))
        self._seen = False  # has_data, kept beside the buffers so that asking costs no read of them

    def forward(self, x: Tensor) -> Tensor:
        """Record statistics of x (any shape, any float dtype; read as float32, without grad); return x itself.
        A batch holding NaN or ±inf is only counted (see the module docstring)."""
        if x.numel() > 0:
            with torch.no_grad():
                data = x.detach()
                # one host sync per batch: whether to record the batch is a Python decision
                if not bool(torch.isfinite(data).all()):
                    self.nonfinite_batches += 1
                    warnings.warn(f"{type(self).__name__}: a batch holding NaN or inf was left out of the observed "
                                  f"range; lowp_ops.convert refuses a layer whose observer saw one", stacklevel=2)
                else:
                    self._observe(data.float())
        return x

    @property
    def has_data(self) -> bool:
        """False until forward saw at least one non-empty batch of finite values, or a state holding one was loaded."""
        return self._seen

    @torch.no_grad()
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale float32, zero_point int32) in reduced shape (() per tensor, (C,) per channel), from
        choose_qparams over the finite batches: degenerate data (all zeros, a constant) still gives a finite scale
        >= MIN_SCALE."""
        if not self.has_data:
            bad = int(self.nonfinite_batches)
            seen = f"only batches holding NaN or inf ({bad})" if bad else "no data"
            raise ValueError(f"{type(self).__name__}: calculate_qparams saw {seen}; run calibration batches of "
                             f"finite values through the observer first")
        return choose_qparams(*self._clip_range(), self.spec)

    def extra_repr(self) -> str:
        return f"spec={self.spec}"

    @torch.no_grad()
    def all_reduce(self, group=None) -> None:
        """Make every rank of `group` (torch.distributed's default group when None) hold what all of them observed,
        so that every rank computes the same qparams: the range is the ranks' widest (all-reduced min / max: the
        range one process seeing every rank's batches would record), left-out batches are summed; subclasses
        combine the rest (a histogram is summed, a moving average averaged). A rank that saw no data takes the
        others'. A collective: every rank calls it on the same observers in the same order (sync_observers)."""
        dist = torch.distributed
        seen = self.min_val.numel() if self.has_data else 0
        # [largest channel count, -smallest]: the ranks that saw data must agree on its shape
        facts = torch.tensor([seen, -(seen or 2**62)], dtype=torch.int64, device=self.min_val.device)
        dist.all_reduce(facts, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(self.nonfinite_batches, op=dist.ReduceOp.SUM, group=group)
        most, fewest = int(facts[0]), -int(facts[1])
        if most == 0:  # no rank saw finite data: calculate_qparams says so on every rank
            return
        if most != fewest:  # every rank sees the same numbers, so every rank raises (no rank left waiting)
            raise ValueError(f"{type(self).__name__}.all_reduce: ranks observed {fewest} and {most} channels; every "
                             f"rank must calibrate the same model")
        shape = () if self.spec.granularity is Granularity.PER_TENSOR else (most,)
        inf = torch.full(shape, torch.inf, device=self.min_val.device)
        lo = self.min_val.float() if self.has_data else inf
        hi = self.max_val.float() if self.has_data else -inf
        self._reduce(lo, hi, group)

    # ----------------------------------------------------------------------------------------- for subclasses

    def _reduce(self, lo: Tensor, hi: Tensor, group) -> None:
        """all_reduce's step for this kind of observer, from this rank's range (±inf where it saw no data)."""
        lo, hi = lo.clone(), hi.clone()
        torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN, group=group)
        torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX, group=group)
        self._store_range(lo, hi)

    def _observe(self, x: Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _observe")

    def _clip_range(self) -> tuple[Tensor, Tensor]:
        return self.min_val, self.max_val

    def _batch_minmax(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The batch's min / max in reduced form, checked against the shape of earlier batches."""
        name, spec = type(self).__name__, self.spec
        if spec.granularity is Granularity.PER_CHANNEL and not -x.ndim <= spec.axis < x.ndim:
            raise ValueError(f"{name}: per_channel axis {spec.axis} is out of range for an input of shape "
                             f"{tuple(x.shape)}")
        lo, hi = reduce_minmax(x, spec)
        if self.has_data and lo.shape != self.min_val.shape:
            raise ValueError(f"{name}: this batch has {lo.numel()} channels along axis {spec.axis}, earlier "
                             f"batches had {self.min_val.numel()}")
        return lo, hi

    def _store_range(self, lo: Tensor, hi: Tensor) -> None:
        # assigned rather than copied: the first batch changes the shape. .to(buffer) keeps the buffer's device
        # and dtype (float32 unless the module was cast, e.g. .to(torch.float64)).
        self.min_val = lo.to(self.min_val)
        self.max_val = hi.to(self.max_val)
        self._seen = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A fresh observer's min_val / max_val have shape (0,), a calibrated one's () or (C,): adopt the saved
        # shape when it is one this spec can have, and let torch report any other mismatch.
        if prefix + "nonfinite_batches" not in state_dict:  # saved before the count existed: nothing counted
            state_dict[prefix + "nonfinite_batches"] = torch.zeros((), dtype=torch.int64)
        for name in ("min_val", "max_val"):
            saved = state_dict.get(prefix + name)
            if saved is None or saved.shape == self._buffers[name].shape:
                continue
            if saved.numel() == 0 or saved.ndim == (1 if self.spec.granularity is Granularity.PER_CHANNEL else 0):
                self._buffers[name] = self._buffers[name].new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # a state without data: (0,) (per channel, or saved before per-tensor states had their shape) or ±inf
        self._seen = self.min_val.numel() > 0 and bool(torch.isfinite(self.min_val).all())


class MinMaxObserver(Observer):
    """Running min / max over every batch: the range of all the data seen, outliers included.

    The qparams equal choose_qparams(*reduce_minmax(all batches concatenated)) exactly.
    Specs: per_tensor or per_channel(axis); batches must agree on x.shape[axis].
    """

    def _observe(self, x: Tensor) -> None:
        lo, hi = self._batch_minmax(x)
        if self.has_data:
            lo, hi = torch.minimum(lo, self.min_val.float()), torch.maximum(hi, self.max_val.float())
        self._store_range(lo, hi)


class MovingAverageMinMaxObserver(Observer):
    """Exponential moving average of each batch's min / max.

    The first batch initializes the range; each later one updates
        min = (1 - momentum) * min + momentum * batch_min      (same for max)
    in float32. A single batch with an outlier moves the range by only `momentum` of the excursion, where a
    running min / max would keep it forever: this is what makes it robust to a few outlier batches.
    Specs: per_tensor or per_channel(axis).
    """

    def __init__(self, spec: QuantSpec, momentum: float = 0.01):
        super().__init__(spec)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"MovingAverageMinMaxObserver: momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum

    def _observe(self, x: Tensor) -> None:
        lo, hi = self._batch_minmax(x)
        if self.has_data:
            m = self.momentum
            lo = (1 - m) * self.min_val.float() + m * lo
            hi = (1 - m) * self.max_val.float() + m * hi
        self._store_range(lo, hi)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, momentum={self.momentum}"

    def _reduce(self, lo: Tensor, hi: Tensor, group) -> None:
        # the mean of the ranks' averages (ranks that saw data): an average has no exact all-ranks equivalent
        dist = torch.distributed
        seen = torch.isfinite(lo).float()
        state = torch.stack([torch.where(seen > 0, lo, 0.0), torch.where(seen > 0, hi, 0.0), seen])
        dist.all_reduce(state, op=dist.ReduceOp.SUM, group=group)
        self._store_range(state[0] / state[2], state[1] / state[2])


class HistogramObserver(Observer):
    """Histogram of every value seen, then the clipping range that minimizes the expected quantization MSE.

    Records min_val / max_val () and histogram (bins,) float32: counts of equal-width bins spanning
    [min_val, max_val]. When a batch extends the range, the old counts are re-binned into the new range assuming
    each old bin's values are spread uniformly over it (an approximation: the true positions are gone); totals
    are kept. The finer the bins, the smaller that smearing: 2048 bins follow torch.ao's HistogramObserver.

    Why clip at all: a range set by rare outliers spreads the 2^b levels thinly over the bulk of the data;
    clipping the outliers costs their squared excess but shrinks the step Δ — and the Δ²/12 rounding noise — of
    every other value. calculate_qparams estimates, from the histogram, the mean squared error of candidate
    ranges (see _expected_sq_error) and keeps the best; the full range is a candidate, so clipping is only chosen
    when the estimate says it pays. Per-tensor specs only (one histogram).
    """

    supported = (Granularity.PER_TENSOR,)

    # Candidate grids. Symmetric specs: clip at t = amax·k/bins, k = 1..bins (at most one histogram bin apart).
    # Affine specs: lo and hi each move in (max - min)/256 steps, about 32k (lo, hi) pairs. The MSE is flat near
    # its minimum: 1024 steps changed the measured MSE by < 0.5 % against 256 (Laplace, Gaussian + outliers,
    # ReLU'd Gaussian, uniform, lognormal; 4 and 8 bits; 200k values, CPU).
    _affine_steps = 256

    def __init__(self, spec: QuantSpec, bins: int = 2048):
        super().__init__(spec)
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"{type(self).__name__}: bins must be an int >= 2, got {bins!r}")
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}"

    def _observe(self, x: Tensor) -> None:
        lo, hi = self._batch_minmax(x)
        if self.has_data:
            lo, hi = torch.minimum(lo, self.min_val.float()), torch.maximum(hi, self.max_val.float())
        new_lo, new_hi = torch.stack([lo, hi]).tolist()  # finite: forward keeps non-finite batches out
        hist = self.histogram.float()
        if self.has_data:
            old_lo, old_hi = torch.stack([self.min_val, self.max_val]).tolist()
            if (old_lo, old_hi) != (new_lo, new_hi):
                hist = self._rebin(hist, old_lo, old_hi, new_lo, new_hi)
        if new_hi > new_lo:
            # histc bins exactly like _rebin assumes: bin i = [lo + i·w, lo + (i+1)·w), x == hi in the last bin
            hist = hist + torch.histc(x, self.bins, min=new_lo, max=new_hi)
        else:  # every value so far equals new_lo: one point mass, kept in bin 0
            hist = hist.clone()
            hist[0] += x.numel()
        self.histogram.copy_(hist)
        self._store_range(lo, hi)

    def _reduce(self, lo: Tensor, hi: Tensor, group) -> None:
        # the widest range, then each rank's counts re-binned onto it and summed (approximate as any re-binning:
        # the same on every rank, close to, not equal to, one process that saw every batch)
        seen = self.has_data
        old = (self.min_val.item(), self.max_val.item()) if seen else None
        super()._reduce(lo, hi, group)
        new_lo, new_hi = self.min_val.item(), self.max_val.item()
        hist = self.histogram.float()
        if not seen:
            hist = torch.zeros_like(hist)
        elif old != (new_lo, new_hi):
            hist = self._rebin(hist, *old, new_lo, new_hi)
        torch.distributed.all_reduce(hist, op=torch.distributed.ReduceOp.SUM, group=group)
        self.histogram.copy_(hist)

    def _rebin(self, hist: Tensor, old_lo: float, old_hi: float, new_lo: float, new_hi: float) -> Tensor:
        """Counts over [old_lo, old_hi] -> counts over the wider [new_lo, new_hi], same number of bins.

        Each old bin's count is split between the (at most two, since new bins are at least as wide) new bins it
        overlaps, in proportion to the overlap.
        """
        bins = self.bins
        new_w = (new_hi - new_lo) / bins
        out = torch.zeros_like(hist)
        if old_hi == old_lo:  # a point mass
            i = min(int((old_lo - new_lo) / new_w), bins - 1)
            out[i] = hist.sum()
            return out
        old_edges = torch.linspace(old_lo, old_hi, bins + 1, dtype=torch.float64, device=hist.device)
        pos = (old_edges - new_lo) / new_w  # old edges in units of new bins
        start, end = pos[:-1], pos[1:]
        first = start.floor().clamp(0, bins - 1)
        in_first = ((torch.minimum(first + 1, end) - start) / (end - start)).clamp(0, 1).float()
        first = first.long()
        out.index_add_(0, first, hist * in_first)
        out.index_add_(0, (first + 1).clamp(max=bins - 1), hist * (1 - in_first))
        return out

    def _centers_and_counts(self) -> tuple[Tensor, Tensor]:
        """Bin centers and counts, float64: _expected_sq_error differences prefix sums of n·c², and a float32
        difference of two large sums would lose the small tail sums that decide where to clip."""
        lo, hi = self.min_val.double(), self.max_val.double()
        steps = torch.arange(self.bins, dtype=torch.float64, device=lo.device)
        return lo + (steps + 0.5) * ((hi - lo) / self.bins), self.histogram.double()

    def _candidates(self) -> tuple[Tensor, Tensor]:
        """Candidate clipping ranges (lo, hi), 1-D float64; the full [min_val, max_val] is among them."""
        lo, hi = self.min_val.double(), self.max_val.double()
        if self.spec.symmetric:
            amax = torch.maximum(-lo, hi) if self.spec.signed else hi.clamp(min=0)
            t = amax * torch.arange(1, self.bins + 1, dtype=torch.float64, device=lo.device) / self.bins
            return -t, t
        frac = torch.arange(self._affine_steps, dtype=torch.float64, device=lo.device) / self._affine_steps
        cand_lo = (lo + (hi - lo) * frac)[:, None].expand(-1, len(frac))
        cand_hi = (hi - (hi - lo) * frac)[None, :].expand(len(frac), -1)
        keep = cand_lo < cand_hi
        return cand_lo[keep], cand_hi[keep]

    def _expected_sq_error(self, lo: Tensor, hi: Tensor) -> Tensor:
        """Estimated sum of (x - x̂)² over the histogram for each candidate range [lo, hi] (1-D, float64).

        The candidate goes through choose_qparams, so the grid is the one that would be used, with representable
        range [rmin, rmax] = [(qmin - zp)·scale, (qmax - zp)·scale]. Values (bin centers) inside it contribute
        the rounding noise scale²/12 each (the uniform-noise model, error.py); values outside contribute their
        squared distance to the nearest end, which is where they are clamped. Sums over the bins beyond a
        threshold come from prefix sums of n, n·c, n·c², so each candidate costs a binary search.
        The model charges Δ²/12 to values that are in fact exact, such as the zeros of ReLU outputs; that
        overestimates the noise of every candidate and leans toward clipping a little more than needed.
        """
        scale, zp = choose_qparams(lo, hi, self.spec)
        scale, zp = scale.double(), zp.double()
        rmin, rmax = (self.spec.qmin - zp) * scale, (self.spec.qmax - zp) * scale
        centers, counts = self._centers_and_counts()
        zero = counts.new_zeros(1)
        p0, p1, p2 = (torch.cat([zero, torch.cumsum(counts * centers**k, 0)]) for k in (0, 1, 2))

        def clipped(first: Tensor, last: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
            # bins first..last-1 clamped to r: (their count, Σ n·(c - r)²)
            n, s1, s2 = p0[last] - p0[first], p1[last] - p1[first], p2[last] - p2[first]
            return n, (s2 - 2 * r * s1 + r * r * n).clamp(min=0)

        end = torch.full_like(rmax, self.bins, dtype=torch.long)
        n_above, err_above = clipped(torch.searchsorted(centers, rmax, right=True), end, rmax)
        n_below, err_below = clipped(torch.zeros_like(end), torch.searchsorted(centers, rmin), rmin)
        inside = p0[-1] - n_above - n_below
        return inside * scale**2 / 12 + err_above + err_below

    def _clip_range(self) -> tuple[Tensor, Tensor]:
        if bool(self.max_val == self.min_val):  # a constant: its own range is exact
            return self.min_val, self.max_val
        lo, hi = self._candidates()
        best = torch.argmin(self._expected_sq_error(lo, hi))
        return lo[best], hi[best]


class PercentileObserver(HistogramObserver):
    """Clip at a percentile of the histogram (HistogramObserver's state, a different range rule).

    Symmetric specs: at t, the `percentile` of |x|: range [-t, t].
    Affine specs: at the (100 - percentile) and `percentile` percentiles of x: range [lo, hi].
    Percentiles are read off the histogram with values spread uniformly inside each bin. Like the MSE search,
    this gives up a rare tail (0.01 % at the default) to buy resolution for the bulk; it is cheaper and makes no
    noise model, but the right percentile depends on the data and the bit width.
    """

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, bins: int = 2048):
        super().__init__(spec, bins)
        if not 50.0 <= percentile <= 100.0:
            raise ValueError(f"PercentileObserver: percentile must be in [50, 100], got {percentile}")
        self.percentile = percentile

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, percentile={self.percentile}"

    def _cdf(self, t: Tensor) -> Tensor:
        """Count of values <= t (float64, t's shape), linear inside each bin."""
        lo, hi = self.min_val.double(), self.max_val.double()
        counts = self.histogram.double()
        cum = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        pos = ((t - lo) / (hi - lo) * self.bins).clamp(0, self.bins)
        i = pos.floor().long().clamp(max=self.bins - 1)
        return cum[i] + (pos - i) * counts[i]

    def _quantile(self, q: float) -> Tensor:
        """The value below which a fraction q of the counts lie (inverse of _cdf)."""
        lo, hi = self.min_val.double(), self.max_val.double()
        counts = self.histogram.double()
        cum = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        target = q * cum[-1]
        i = (torch.searchsorted(cum, target) - 1).clamp(0, self.bins - 1)  # the bin where cum reaches target
        frac = ((target - cum[i]) / counts[i].clamp(min=1e-30)).clamp(0, 1)
        return lo + (i + frac) * (hi - lo) / self.bins

    def _clip_range(self) -> tuple[Tensor, Tensor]:
        if bool(self.max_val == self.min_val):
            return self.min_val, self.max_val
        p = self.percentile / 100
        if not self.spec.symmetric:
            return self._quantile(1 - p), self._quantile(p)
        # smallest t on the grid amax·k/bins (at most one bin apart) with count(|x| <= t) >= p · total
        _, t = self._candidates()
        inside = self._cdf(t) - self._cdf(-t)
        k = torch.searchsorted(inside, p * self.histogram.double().sum()).clamp(max=len(t) - 1)
        return -t[k], t[k]


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": HistogramObserver,
}
