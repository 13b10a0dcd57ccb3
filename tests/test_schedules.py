"""flaxdistil.schedules against TextBrewer 0.2.1's schedulers, by hand, and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxdistil import schedules

torch = pytest.importorskip("torch")

RTOL = 1e-5
B, T, V = 3, 5, 7


def _tb_presets():
    pytest.importorskip("textbrewer")  # a fallback only: `make setup` installs it
    from textbrewer import presets

    return presets


def _logits(seed, rows=(B, T)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, *rows, V)).astype(np.float32) * 2


def _row_mask(rows):
    if len(rows) == 1:
        return np.array([True, False, True])
    return np.arange(T)[None, :] < np.array([T, 0, 2])[:, None]


SPECS = [["flsw", 1.0, 2.0], ["flsw", 0.5, 1.5], ["cwsm", 2.0], ("cwsm", {"beta": 0.7})]


@pytest.mark.parametrize("rows", [(B, T), (B,)], ids=["BxT", "B"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: "-".join(map(str, s)))
def test_scheduled_temperatures_vs_textbrewer(spec, masked, rows):
    presets = _tb_presets()
    s, t = _logits(len(str(spec)), rows)
    base = 2.0
    sel = _row_mask(rows) if masked else np.ones(rows, bool)
    ref = presets.TEMPERATURE_SCHEDULER[spec](torch.tensor(s[sel]), torch.tensor(t[sel]), base)
    fn = schedules.TEMPERATURE_SCHEDULER[spec]
    got = np.asarray(fn(s, t, base, sel if masked else None))
    assert got.shape == rows
    np.testing.assert_allclose(got[sel], ref.numpy(), rtol=RTOL, atol=1e-5)  # temperatures ~1
    np.testing.assert_array_equal(got[~sel], base)  # unselected rows keep the base temperature
    assert np.ptp(got[sel]) > 0.01  # really one temperature per row


def test_scheduled_temperature_ignores_junk_rows_and_stops_gradients():
    s, t = _logits(3)
    mask = _row_mask((B, T))
    fn = schedules.temperature_scheduler(["flsw", 1.0, 2.0])
    clean = fn(s, t, 2.0, mask)
    junk = np.where(mask[..., None], s, np.nan)
    np.testing.assert_array_equal(fn(junk, t, 2.0, mask), clean)
    grads = jax.grad(lambda x: jnp.sum(fn(x, t, 2.0, mask)))(s)
    assert not np.any(grads)  # TextBrewer computes temperatures under no_grad


def test_constant_temperature_and_resolution():
    s, t = _logits(4)
    for spec in (None, "", "constant", ["constant"]):
        fn = schedules.temperature_scheduler(spec)
        assert fn(s, t, 3.0) == 3.0 and fn(s, t, 3.0, np.ones((B, T))) == 3.0
    assert schedules.TEMPERATURE_SCHEDULER["constant"](s, t, 1.5) == 1.5
    built = schedules.temperature_scheduler(("flsw", 1, 2))
    want = schedules.TEMPERATURE_SCHEDULER[["flsw", 1, 2]](s, t, 2.0)
    np.testing.assert_array_equal(built(s, t, 2.0), want)
    assert (
        "flsw" in schedules.TEMPERATURE_SCHEDULER and ["cwsm", 1] in schedules.TEMPERATURE_SCHEDULER
    )
    assert schedules.temperature_scheduler(len) is len  # a callable passes through


def test_weight_schedulers_by_hand():
    presets = _tb_presets()
    for x in (0.0, 0.25, 1.0):
        assert schedules.WEIGHT_SCHEDULER["linear_decay"](x) == 1 - x
        assert schedules.WEIGHT_SCHEDULER["linear_growth"](x) == x
        assert schedules.WEIGHT_SCHEDULER["constant"](x) == 1.0
        for name in ("linear_decay", "linear_growth"):
            assert schedules.weight_scheduler(name)(x) == presets.WEIGHT_SCHEDULER[name](x)
    assert schedules.weight_scheduler(None)(0.3) == 1.0
    assert schedules.weight_scheduler("")(0.3) == 1.0
    np.testing.assert_allclose(jax.jit(schedules.weight_scheduler("linear_decay"))(0.25), 0.75)


def test_unknown_names_raise_one_line_listing_the_known():
    with pytest.raises(
        ValueError, match="unknown temperature scheduler 'flws'; known: constant, flsw, cwsm"
    ):
        schedules.temperature_scheduler(["flws", 1, 2])
    with pytest.raises(ValueError, match="unknown temperature scheduler 'cosine'"):
        schedules.temperature_scheduler("cosine")
    with pytest.raises(ValueError, match="needs parameters"):
        schedules.temperature_scheduler("flsw")
    msg = "unknown weight scheduler 'linear'; known: constant, linear_decay, linear_growth"
    with pytest.raises(ValueError, match=msg):
        schedules.weight_scheduler("linear")
    with pytest.raises(ValueError, match="unknown weight scheduler"):
        schedules.weight_scheduler(["linear_decay"])


@pytest.mark.parametrize("spec", [["flsw", 1.0, 2.0], ["cwsm", 2.0]], ids=["flsw", "cwsm"])
def test_jitted_scheduler_follows_inputs_without_retracing(spec):
    traces = []

    def scheduled(s, t, base, mask):
        traces.append(1)
        return schedules.temperature_scheduler(spec)(s, t, base, mask)

    jitted = jax.jit(scheduled)
    mask = _row_mask((B, T))
    outs = []
    for seed, base in ((5, 2.0), (6, 2.0), (7, 4.0)):
        s, t = _logits(seed)
        out = jitted(s, t, jnp.float32(base), mask)
        np.testing.assert_allclose(out, scheduled(s, t, base, mask), rtol=RTOL)
        outs.append(np.asarray(out))
    assert len(traces) == 1 + 3  # one trace for jit, then the three eager reference calls
    assert jitted._cache_size() == 1
    assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
