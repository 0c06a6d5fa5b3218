"""Gradient update schedules and LR schedules against independently written formulas."""

from __future__ import annotations

import math
import textwrap
import tracemalloc

import numpy as np
import pytest

from distnn.engine.lr_schedules import (
    Constant,
    Cosine,
    Exponential,
    InverseTime,
    LRSchedule,
    StepDecay,
    Warmup,
    as_lr_schedule,
    parse_lr_schedule,
)
from distnn.engine.schedules import (
    SCHEDULES,
    SGD,
    AdaGrad,
    Adam,
    GradientUpdateSchedule,
    Momentum,
    Nesterov,
    NormalizedStep,
    RMSProp,
    make_schedule,
)
from distnn.errors import DistnnError

SHAPE = (37,)
RTOL = 1e-12


def grads(n, shape=SHAPE, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


# ---- reference implementations: plain, allocating NumPy, one step at a time ----


def ref_normalized(gs, lr):
    return [lr(t) * g / np.sqrt(np.sum(g * g)) for t, g in enumerate(gs)]


def ref_sgd(gs, lr):
    return [lr(t) * g for t, g in enumerate(gs)]


def ref_momentum(gs, lr, beta=0.9, nesterov=False):
    v, out = np.zeros_like(gs[0]), []
    for t, g in enumerate(gs):
        v = beta * v + g
        out.append(lr(t) * (g + beta * v) if nesterov else lr(t) * v)
    return out


def ref_adagrad(gs, lr, eps=1e-8):
    G, out = np.zeros_like(gs[0]), []
    for t, g in enumerate(gs):
        G = G + g**2
        out.append(lr(t) * g / (np.sqrt(G) + eps))
    return out


def ref_rmsprop(gs, lr, rho=0.9, eps=1e-8):
    s, out = np.zeros_like(gs[0]), []
    for t, g in enumerate(gs):
        s = rho * s + (1 - rho) * g**2
        out.append(lr(t) * g / (np.sqrt(s) + eps))
    return out


def ref_adam(gs, lr, b1=0.9, b2=0.999, eps=1e-8):
    m, v, out = np.zeros_like(gs[0]), np.zeros_like(gs[0]), []
    for t, g in enumerate(gs):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        mhat, vhat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
        out.append(lr(t) * mhat / (np.sqrt(vhat) + eps))
    return out


CASES = {
    "normalized": (lambda lr: NormalizedStep(lr), ref_normalized),
    "sgd": (lambda lr: SGD(lr), ref_sgd),
    "momentum": (lambda lr: Momentum(lr), ref_momentum),
    "momentum_b05": (lambda lr: Momentum(lr, beta=0.5), lambda g, lr: ref_momentum(g, lr, 0.5)),
    "nesterov": (lambda lr: Nesterov(lr), lambda g, lr: ref_momentum(g, lr, nesterov=True)),
    "adagrad": (lambda lr: AdaGrad(lr), ref_adagrad),
    "adagrad_eps": (lambda lr: AdaGrad(lr, eps=0.1), lambda g, lr: ref_adagrad(g, lr, 0.1)),
    "rmsprop": (lambda lr: RMSProp(lr), ref_rmsprop),
    "rmsprop_rho": (lambda lr: RMSProp(lr, rho=0.5), lambda g, lr: ref_rmsprop(g, lr, 0.5)),
    "adam": (lambda lr: Adam(lr), ref_adam),
    "adam_betas": (
        lambda lr: Adam(lr, beta1=0.5, beta2=0.8, eps=1e-3),
        lambda g, lr: ref_adam(g, lr, 0.5, 0.8, 1e-3),
    ),
}
RULES = ["normalized", "sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lr", [Constant(0.05), Exponential(0.1, 0.7)], ids=["const", "exp"])
def test_matches_reference(case, lr):
    make, ref = CASES[case]
    gs = grads(6, seed=1)
    sched = make(lr)
    expected = ref(gs, lr)
    for t, (g, e) in enumerate(zip(gs, expected, strict=True)):
        assert sched.t == t
        np.testing.assert_allclose(sched(g), e, rtol=RTOL, atol=0)
    assert sched.t == len(gs)


def test_registry_names_and_nesterov():
    assert set(SCHEDULES) == {
        "normalized",
        "sgd",
        "momentum",
        "nesterov",
        "adagrad",
        "rmsprop",
        "adam",
    }
    for cls in SCHEDULES.values():
        assert issubclass(cls, GradientUpdateSchedule)
    assert SCHEDULES["nesterov"](0.1).nesterov and not SCHEDULES["momentum"](0.1).nesterov


@pytest.mark.parametrize("scale", [1.0, 1e-200, 1e200, 1e-310])
def test_normalized_step_norm_and_direction(scale):
    lr = 0.3
    for g in grads(3, shape=(5, 7), seed=2):
        g = g * scale
        step = NormalizedStep(lr)(g)
        assert np.all(np.isfinite(step))
        unit = g.ravel() / np.max(np.abs(g))
        np.testing.assert_allclose(np.linalg.norm(step), lr, rtol=1e-12)
        # parallel and same orientation: step = c·g with c > 0
        cos = step.ravel() @ unit / (np.linalg.norm(step) * np.linalg.norm(unit))
        assert cos == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(step.ravel(), lr * unit / np.linalg.norm(unit), rtol=1e-12)


@pytest.mark.parametrize("name", RULES)
def test_zero_gradient_gives_zero_step(name):
    sched = SCHEDULES[name](0.1)
    for _ in range(3):
        step = sched(np.zeros(SHAPE))
        assert np.all(np.isfinite(step)) and not np.any(step)


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("via_npz", [False, True])
def test_state_dict_resume_is_bit_identical(name, via_npz, tmp_path):
    lr = Cosine(0.1, total_steps=8, min_lr=0.01)
    gs = grads(8, seed=3)
    whole = SCHEDULES[name](lr)
    expected = [whole(g).copy() for g in gs]

    first = SCHEDULES[name](lr)
    for g in gs[:3]:
        first(g)
    state = first.state_dict()
    assert state["t"] == 3
    assert set(state) == {"t", *type(first).state_arrays}
    if via_npz:
        np.savez(tmp_path / "s.npz", **state)
        with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
            state = dict(f)
    first(gs[3])  # must not change the saved state
    second = SCHEDULES[name](lr)
    second.load_state_dict(state)  # before its first call
    assert second.t == 3
    for g, e in zip(gs[3:], expected[3:], strict=True):
        np.testing.assert_array_equal(second(g), e)


@pytest.mark.parametrize("name", RULES)
def test_fresh_state_has_no_arrays_and_loads(name):
    state = SCHEDULES[name](0.1).state_dict()
    assert state == {"t": 0}
    sched = SCHEDULES[name](0.1)
    sched.load_state_dict(state)
    g = grads(1)[0]
    np.testing.assert_array_equal(sched(g), SCHEDULES[name](0.1)(g))


def test_load_state_dict_validation():
    adam = Adam(0.1)
    g = grads(1)[0]
    adam(g)
    good = adam.state_dict()
    with pytest.raises(DistnnError, match="unexpected keys"):
        AdaGrad(0.1).load_state_dict(good)
    with pytest.raises(DistnnError, match="'t'"):
        Adam(0.1).load_state_dict({k: v for k, v in good.items() if k != "t"})
    with pytest.raises(DistnnError, match=r"missing keys \['v'\]"):
        Adam(0.1).load_state_dict({"t": 1, "m": good["m"]})
    with pytest.raises(DistnnError, match="missing keys"):
        Adam(0.1).load_state_dict({"t": 4})
    with pytest.raises(DistnnError, match="different shapes"):
        Adam(0.1).load_state_dict({"t": 1, "m": good["m"], "v": np.zeros(3)})
    with pytest.raises(DistnnError, match="integer"):
        Adam(0.1).load_state_dict({**good, "t": 1.5})
    used = Adam(0.1)
    used(np.ones(5))
    with pytest.raises(DistnnError, match="shape"):
        used.load_state_dict(good)  # state for 37 parameters, schedule has 5
    fresh = Adam(0.1)
    fresh.load_state_dict(good)
    with pytest.raises(DistnnError, match="different network"):
        fresh(np.ones(5))


def test_loaded_arrays_are_copied():
    sched = AdaGrad(0.1)
    sched(grads(1)[0])
    state = sched.state_dict()
    other = AdaGrad(0.1)
    other.load_state_dict(state)
    saved = state["sum_sq"].copy()
    other(grads(1, seed=9)[0])
    np.testing.assert_array_equal(state["sum_sq"], saved)


@pytest.mark.parametrize("name", RULES)
def test_step_buffer_is_reused(name):
    sched = SCHEDULES[name](0.1)
    gs = grads(4, seed=4)
    first = sched(gs[0])
    for g in gs[1:]:
        step = sched(g)
        assert step is first and np.shares_memory(step, first)
        assert not np.shares_memory(step, g)


@pytest.mark.parametrize("name", RULES)
def test_no_allocation_per_call(name):
    sched = SCHEDULES[name](Warmup(Cosine(0.1, 10), 3))
    gs = grads(4, shape=(50_000,), seed=5)
    sched(gs[0])
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for g in gs[1:]:
            sched(g)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < gs[0].nbytes // 4


@pytest.mark.parametrize("name", RULES)
def test_float32_in_float32_out(name):
    sched = SCHEDULES[name](0.1)
    gs = grads(3, seed=6, dtype=np.float32)
    for g in gs:
        step = sched(g)
        assert step.dtype == np.float32 and np.all(np.isfinite(step))
    for key, value in sched.state_dict().items():
        if key != "t":
            assert value.dtype == np.float32
    ref = SCHEDULES[name](0.1)
    for g in gs:
        expected = ref(g.astype(np.float64))
    np.testing.assert_allclose(step, expected, rtol=1e-4, atol=1e-6)


def test_identical_inputs_identical_outputs():
    gs = grads(5, seed=7)
    a, b = Adam(0.01), Adam(0.01)
    for g in gs:
        np.testing.assert_array_equal(a(g), b(g.copy()))


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Momentum(0.1, beta=1.0),
        lambda: RMSProp(0.1, rho=-0.1),
        lambda: Adam(0.1, beta2=1.5),
        lambda: AdaGrad(0.1, eps=0.0),
        lambda: SGD(0.0),
        lambda: SGD(-1.0),
    ],
)
def test_bad_hyperparameters(bad):
    with pytest.raises(DistnnError):
        bad()


# ---- learning-rate schedules ----


def test_lr_schedule_values():
    lr = 0.2
    for t in range(0, 40, 3):
        assert Constant(lr)(t) == lr
        assert StepDecay(lr, 5, 0.5)(t) == pytest.approx(lr * 0.5 ** (t // 5), rel=1e-15)
        assert Exponential(lr, 0.9)(t) == pytest.approx(lr * 0.9**t, rel=1e-15)
        assert InverseTime(lr, 0.25)(t) == pytest.approx(lr / (1 + 0.25 * t), rel=1e-15)
        c = Cosine(lr, 20, min_lr=0.02)(t)
        want = 0.02 + (lr - 0.02) * (1 + math.cos(math.pi * min(t, 20) / 20)) / 2
        assert c == pytest.approx(want, rel=1e-14)
    assert StepDecay(lr, 5, 0.5)(4) == lr and StepDecay(lr, 5, 0.5)(5) == lr / 2
    assert Cosine(lr, 20)(0) == lr
    assert Cosine(lr, 20)(10) == pytest.approx(lr / 2, rel=1e-14)
    assert Cosine(lr, 20)(20) == 0.0 and Cosine(lr, 20, 0.01)(1000) == 0.01
    assert all(isinstance(s(3), float) for s in (Constant(1), StepDecay(1, 2, 0.5)))


def test_warmup_composition():
    inner = Exponential(0.1, 0.95)
    w = Warmup(inner, 4)
    for t in range(10):
        factor = (t + 1) / 4 if t < 4 else 1.0
        assert w(t) == pytest.approx(inner(t) * factor, rel=1e-15)
    assert w(3) == inner(3)
    ww = Warmup(Warmup(0.5, 2), 4)  # wraps any schedule, even a warmup, or a float
    assert ww(0) == pytest.approx(0.5 * (1 / 2) * (1 / 4))
    assert ww(1) == pytest.approx(0.5 * 1.0 * (2 / 4))


def test_as_lr_schedule():
    c = as_lr_schedule(0.3)
    assert isinstance(c, Constant) and c(7) == 0.3
    assert isinstance(as_lr_schedule(np.float32(0.5)), Constant)
    e = Exponential(0.1, 0.5)
    assert as_lr_schedule(e) is e
    with pytest.raises(TypeError):
        as_lr_schedule("0.1")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("constant", Constant(0.1)),
        ("step:10:0.5", StepDecay(0.1, 10, 0.5)),
        ("exp:0.99", Exponential(0.1, 0.99)),
        ("inverse:0.01", InverseTime(0.1, 0.01)),
        ("inverse:0", InverseTime(0.1, 0.0)),
        ("cosine", Cosine(0.1, 200)),
        ("cosine:0.001", Cosine(0.1, 200, 0.001)),
        ("cosine+warmup:100", Warmup(Cosine(0.1, 200), 100)),
        ("step:3:0.1+warmup:1", Warmup(StepDecay(0.1, 3, 0.1), 1)),
    ],
)
def test_parse_lr_schedule_good(spec, expected):
    s = parse_lr_schedule(spec, 0.1, 200)
    assert isinstance(s, LRSchedule) and type(s) is type(expected)
    for t in (0, 1, 5, 50, 99, 100, 150, 199, 200, 300):
        assert s(t) == expected(t)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "linear",
        "constant:1",
        "step",
        "step:10",
        "step:0:0.5",
        "step:2.5:0.5",
        "step:10:0",
        "step:10:-1",
        "exp",
        "exp:x",
        "exp:0",
        "exp:nan",
        "inverse:-1",
        "cosine:1:2",
        "cosine:5",
        "cosine:-0.1",
        "cosine+warmup",
        "cosine+warmup:0",
        "cosine+warmup:x",
        "cosine+cooldown:5",
        "cosine+warmup:5+warmup:3",
    ],
)
def test_parse_lr_schedule_bad(spec):
    with pytest.raises(DistnnError) as info:
        parse_lr_schedule(spec, 0.1, 200)
    msg = str(info.value)
    assert "\n" not in msg and repr(spec) in msg and "step:EVERY:GAMMA" in msg


@pytest.mark.parametrize(("lr", "total"), [(0.0, 10), (-0.1, 10), (0.1, 0)])
def test_parse_lr_schedule_bad_values(lr, total):
    with pytest.raises(DistnnError):
        parse_lr_schedule("cosine", lr, total)


# ---- make_schedule ----


def test_make_schedule_registry():
    for name, cls in SCHEDULES.items():
        s = make_schedule(name, 0.1)
        assert type(s) is cls and s.lr == 0.1
    s = make_schedule("adam", Warmup(0.1, 10))
    assert s.lr == pytest.approx(0.01)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_sched_mod.py").write_text(
        textwrap.dedent("""
        import numpy as np
        from distnn.engine.schedules import GradientUpdateSchedule

        class SignSGD(GradientUpdateSchedule):
            state_arrays = ("count",)

            def _step(self, grad, lr, out):
                self.count += 1
                np.sign(grad, out=out)
                out *= lr

        class Broken(GradientUpdateSchedule):
            def __init__(self, lr):
                raise ValueError("needs\\ntwo lines")

            def _step(self, grad, lr, out):
                pass

        class NotASchedule:
            def __init__(self, lr):
                pass
    """)
    )
    (tmp_path / "bad_import_mod.py").write_text("import no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_sched_mod"


def test_make_schedule_user_class(user_module):
    s = make_schedule(f"{user_module}:SignSGD", 0.5)
    g = grads(1)[0]
    np.testing.assert_array_equal(s(g), 0.5 * np.sign(g))
    s(g)
    state = s.state_dict()
    np.testing.assert_array_equal(state["count"], 2.0)
    other = make_schedule(f"{user_module}:SignSGD", 0.5)
    other.load_state_dict(state)
    other(g)
    np.testing.assert_array_equal(other.state_dict()["count"], 3.0)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("no_such_pkg_q.mod:Cls", r"cannot import schedule 'no_such_pkg_q.mod:Cls': No module"),
        ("bad_import_mod:Cls", r"cannot import schedule 'bad_import_mod:Cls': No module"),
        ("my_sched_mod:Missing", r"cannot import schedule 'my_sched_mod:Missing'.*no attribute"),
        ("my_sched_mod:NotASchedule", r"'my_sched_mod:NotASchedule' is not a subclass"),
        ("my_sched_mod:np", r"'my_sched_mod:np' is not a subclass"),
        ("my_sched_mod:Broken", r"cannot construct schedule 'my_sched_mod:Broken': needs two"),
        ("my_sched_mod:GradientUpdateSchedule", r"cannot construct .*abstract"),
        ("my_sched_mod:", r"expected package.module:ClassName"),
        (":SignSGD", r"expected package.module:ClassName"),
        ("adamw", r"unknown schedule 'adamw'; valid names: normalized, sgd, momentum"),
    ],
)
def test_make_schedule_bad(user_module, spec, pattern):
    with pytest.raises(DistnnError, match=pattern) as info:
        make_schedule(spec, 0.1)
    assert "\n" not in str(info.value)


def test_make_schedule_bad_lr():
    with pytest.raises(DistnnError, match="cannot construct schedule 'sgd'"):
        make_schedule("sgd", -1.0)
