"""TextBrewer's temperature and loss-weight schedulers (textbrewer.schedulers / presets), in JAX.

A temperature scheduler is fn(logits_S, logits_T, base_temperature, mask=None) -> temperature: the
base temperature itself ('constant') or one temperature per row, shape logits.shape[:-1] ('flsw',
'cwsm'; arXiv:1911.07471), which every KD_LOSS_MAP loss accepts. A weight scheduler maps training
progress x in [0, 1] to a loss weight. Configs name them as TextBrewer does: 'constant', or
['flsw', beta, gamma] / ['cwsm', beta]; temperature_scheduler(spec) / weight_scheduler(spec)
resolve such a value. Everything here is jittable (no Python branching on values).
"""

import jax
import jax.numpy as jnp

_FLSW_EPS = 1e-4  # TextBrewer's default eps in the flsw normalisation
_CWSM_EPS = 1e-3  # TextBrewer's offset in 1 / (max prob + eps)


def constant_temperature(logits_S, logits_T, base_temperature, mask=None):
    """The base temperature, unchanged."""
    return base_temperature


def _spread(w, base_temperature, beta, mask):
    """base + (mean(w) - w) * beta, the mean over selected rows; unselected rows get the base."""
    sel = jnp.ones(w.shape, bool) if mask is None else jnp.asarray(mask) != 0
    w = jnp.where(sel, w, 0.0)
    w_mean = jnp.sum(w) / jnp.maximum(jnp.sum(sel, dtype=jnp.float32), 1.0)
    base = jnp.asarray(base_temperature, jnp.float32)
    return jnp.where(sel, base + (w_mean - w) * beta, base)


def _rows(logits, mask):
    """float32 logits with unselected rows zeroed, outside the gradient (TextBrewer's no_grad)."""
    x = jnp.asarray(jax.lax.stop_gradient(logits), jnp.float32)
    if mask is None:
        return x
    return jnp.where((jnp.asarray(mask) != 0)[..., None], x, 0.0)


def flsw(beta, gamma, eps=_FLSW_EPS, *args):
    """TextBrewer flsw_temperature_scheduler_builder: rows whose student and teacher logits point
    the same way (w = (1 - cos)^gamma small) get a higher temperature, by beta * (mean(w) - w)."""

    def flsw_temperature(logits_S, logits_T, base_temperature, mask=None):
        v, t = _rows(logits_S, mask), _rows(logits_T, mask)
        v = v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps)
        t = t / (jnp.linalg.norm(t, axis=-1, keepdims=True) + eps)
        # The clamp only removes rounding below 0, where a fractional gamma would give NaN.
        w = jnp.maximum(1.0 - jnp.sum(v * t, axis=-1), 0.0) ** gamma
        return _spread(w, base_temperature, beta, mask)

    return flsw_temperature


def cwsm(beta, *args):
    """TextBrewer cwsm_temperature_scheduler_builder: rows where the student is less confident
    (w = 1 / (max softmax + 1e-3) large) get a lower temperature, by beta * (mean(w) - w)."""

    def cwsm_temperature(logits_S, logits_T, base_temperature, mask=None):
        v_max = jnp.max(jax.nn.softmax(_rows(logits_S, mask), axis=-1), axis=-1)
        return _spread(1.0 / (v_max + _CWSM_EPS), base_temperature, beta, mask)

    return cwsm_temperature


class DynamicKeyDict:
    """TextBrewer's presets.DynamicKeyDict: d[name] is the stored value; d[[name, *args]] (or a
    tuple) calls it, d[[name, {kwargs}]] calls it with keyword arguments."""

    def __init__(self, store):
        self.store = dict(store)

    def __getitem__(self, key):
        if not isinstance(key, list | tuple):
            return self.store[key]
        name, args = key[0], key[1:]
        if len(args) == 1 and isinstance(args[0], dict):
            return self.store[name](**args[0])
        return self.store[name](*args)

    def __setitem__(self, key, value):
        self.store[key] = value

    def __contains__(self, key):
        return (key[0] if isinstance(key, list | tuple) else key) in self.store

    def __iter__(self):
        return iter(self.store)

    def keys(self):
        return self.store.keys()


TEMPERATURE_SCHEDULER = DynamicKeyDict(
    {"constant": constant_temperature, "flsw": flsw, "cwsm": cwsm}
)
_BUILDERS = ("flsw", "cwsm")  # entries that need parameters before they are a scheduler

WEIGHT_SCHEDULER = {
    "constant": lambda x: 1.0,
    "linear_decay": lambda x: 1 - x,  # TextBrewer linear_decay_weight_scheduler
    "linear_growth": lambda x: x,  # TextBrewer linear_growth_weight_scheduler
}


def _unknown(kind, name, known):
    return ValueError(f"unknown {kind} scheduler {name!r}; known: {', '.join(known)}")


def temperature_scheduler(spec):
    """fn(logits_S, logits_T, base_temperature, mask=None) for a config value: '' / None /
    'constant', a name with parameters ['flsw', beta, gamma] / ('cwsm', beta), or a callable."""
    if callable(spec):
        return spec
    if not spec:
        return constant_temperature
    name, args = (spec[0], tuple(spec[1:])) if isinstance(spec, list | tuple) else (spec, ())
    if name not in TEMPERATURE_SCHEDULER:
        raise _unknown("temperature", name, TEMPERATURE_SCHEDULER.keys())
    if args:
        return TEMPERATURE_SCHEDULER[(name, *args)]
    if name in _BUILDERS:
        raise ValueError(
            f"temperature scheduler {name!r} needs parameters, e.g. ['flsw', beta, "
            f"gamma] or ['cwsm', beta]; got {spec!r}"
        )
    return TEMPERATURE_SCHEDULER[name]


def weight_scheduler(spec):
    """fn(progress in [0, 1]) -> weight for a config value: '' / None / a name, or a callable."""
    if callable(spec):
        return spec
    if not spec:
        return WEIGHT_SCHEDULER["constant"]
    if not isinstance(spec, str) or spec not in WEIGHT_SCHEDULER:
        raise _unknown("weight", spec, WEIGHT_SCHEDULER)
    return WEIGHT_SCHEDULER[spec]
