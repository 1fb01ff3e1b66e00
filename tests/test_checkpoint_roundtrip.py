"""save/load round trips: every dtype and shape bit-exact, plain values, partial loads."""

import collections
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffrecord.checkpoint as ck
from ffrecord.checkpoint.encoding import Decoder, Encoder

QUANTIZED = {torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4}
ALL_DTYPES = sorted(
    {getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)} - QUANTIZED, key=str
)
SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def raw_bytes(t):
    """The bytes of a tensor in logical (row-major) order, bit for bit."""
    same = SAME_WIDTH_INT.get(t.element_size())
    c = t.view(same).contiguous() if same is not None else t.contiguous()
    return c.reshape(-1).view(torch.uint8).numpy().tobytes()


def random_tensor(dtype, shape, seed):
    n = math.prod(shape) * dtype.itemsize
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(dtype).reshape(shape)


def test_every_dtype_is_bit_exact(tmp_path):
    assert len(ALL_DTYPES) >= 40  # bf16, fp8 variants, complex, bits, uint1..7, ...
    state = {}
    for k, d in enumerate(ALL_DTYPES):
        name = str(d).rpartition(".")[2]
        state[name] = random_tensor(d, (3, 5), k)  # random bits: NaN payloads, bad bools...
        state[name + "_t"] = random_tensor(d, (5, 3), k + 100).t()  # non-contiguous
        state[name + "_scalar"] = random_tensor(d, (), k + 200)
        state[name + "_empty"] = random_tensor(d, (0, 4), k)
    ck.save(state, tmp_path / "c")
    out = ck.load(tmp_path / "c")
    assert out.keys() == state.keys()
    for k, t in state.items():
        assert out[k].dtype == t.dtype and out[k].shape == t.shape, k
        assert out[k].is_contiguous()
        assert raw_bytes(out[k]) == raw_bytes(t), k


def test_views_and_layouts_are_saved_as_their_values(tmp_path):
    base = torch.randn(6, 8, dtype=torch.float64)
    c = torch.randn(4, dtype=torch.complex64)
    state = {
        "slice": base[1:5:2, ::3],
        "expanded": torch.arange(3.0).expand(4, 3),  # stride 0
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "conj": c.conj(),  # a lazy conjugate view
        "neg": torch.randn(3, dtype=torch.complex64).conj().imag,  # a negative-bit view
        "param": torch.nn.Parameter(torch.randn(3)),
        "zero_dim": torch.tensor(2.5),
        "empty3d": torch.empty(2, 0, 3),
    }
    ck.save(state, tmp_path / "c")
    out = ck.load(tmp_path / "c")
    for k, t in state.items():
        expect = t.detach().resolve_conj().resolve_neg()
        assert torch.equal(out[k], expect), k
        assert type(out[k]) is torch.Tensor and out[k].is_contiguous()
    assert not out["conj"].is_conj()


def test_tied_tensors_stay_tied_other_views_do_not(tmp_path):
    w = torch.randn(10, 4)
    state = {"wte": w, "lm_head": w.detach(), "row": w[2], "again": [w]}
    ck.save(state, tmp_path / "c")
    out = ck.load(tmp_path / "c")
    assert out["wte"] is out["lm_head"] is out["again"][0]  # the same view: stored once
    assert torch.equal(out["row"], w[2])
    out["row"].zero_()  # a different view of the storage is an independent copy
    assert torch.equal(out["wte"], w)


def test_plain_values_round_trip_with_their_types(tmp_path):
    od = collections.OrderedDict([("b", 1), ("a", 2)])
    od._metadata = {"": {"version": 1}}
    state = {
        "none": None,
        "bools": [True, False],
        "ints": [0, -1, 2**80, -(2**70)],
        "floats": [0.1, -0.0, float("inf"), float("-inf"), 1e-310],
        "nan": float("nan"),
        "complex": complex(1.5, -float("inf")),
        "str": "h\u00e9llo \U0001f600 \ud800",
        "bytes": b"\x00\xff",
        "bytearray": bytearray(b"ab"),
        "tuple": (1, (2, 3), []),
        "set": {1, "a", (2, 3)},
        "frozenset": frozenset({4}),
        1: "int key",
        2.5: "float key",
        (1, "x"): "tuple key",
        None: "none key",
        False: "bool key",
        b"k": "bytes key",
        "odict": od,
        "dtype": torch.bfloat16,
        "device": torch.device("cuda:1"),
        "size": torch.Size([2, 3]),
        "np_scalars": [np.float32(1.5), np.int64(-3), np.bool_(True), np.complex128(1 + 2j)],
    }
    ck.save(state, tmp_path / "c")
    out = ck.load(tmp_path / "c")
    nan = out.pop("nan")
    expect = dict(state)
    expect.pop("nan")
    assert math.isnan(nan)
    assert out == expect
    assert math.copysign(1, out["floats"][1]) == -1
    assert type(out["tuple"]) is tuple and type(out["tuple"][2]) is list
    assert type(out["odict"]) is collections.OrderedDict and list(out["odict"]) == ["b", "a"]
    assert out["odict"]._metadata == {"": {"version": 1}}
    assert [type(x) for x in out["np_scalars"]] == [np.float32, np.int64, np.bool_, np.complex128]
    assert type(out["bytearray"]) is bytearray and type(out["frozenset"]) is frozenset


def test_numpy_arrays_and_rng_state(tmp_path):
    rng_state = np.random.RandomState(5).get_state()
    state = {
        "rng": rng_state,
        "f": np.random.default_rng(0).random((4, 3)),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "strided": np.arange(20)[::3],
        "strings": np.array(["a", "bcd"]),
        "bytes": np.array([b"xy", b"z"]),
        "times": np.array(["2024-01-01T00:00"], dtype="M8[ns]"),
        "bools": np.array([True, False]),
        "c": np.array([1 + 2j], dtype=np.complex64),
        "zero_d": np.array(3.0),
        "empty": np.zeros((0, 2), dtype=np.int16),
    }
    ck.save(state, tmp_path / "c")
    out = ck.load(tmp_path / "c")
    assert out["rng"][0] == "MT19937" and np.array_equal(out["rng"][1], rng_state[1])
    assert out["rng"][2:] == rng_state[2:]
    for k, a in state.items():
        if k == "rng":
            continue
        assert type(out[k]) is np.ndarray and out[k].dtype == a.dtype and out[k].shape == a.shape, k
        assert np.array_equal(out[k], a), k
    restored = np.random.RandomState()
    restored.set_state(out["rng"])
    assert restored.rand() == np.random.RandomState(5).rand()


def test_unsupported_leaves_are_refused_at_save(tmp_path):
    class Custom:
        pass

    for bad, what in [
        (Custom(), "Custom"),
        (np.array([object()]), "dtype object"),
        (torch.randn(3).to_sparse(), "layout"),
        (torch.empty(2, device="meta"), "meta"),
        (collections.namedtuple("P", "x")(1), "P"),
        ({Custom(): 1}, "not a plain value"),
    ]:
        with pytest.raises(TypeError, match=what):
            ck.save({"x": {"y": bad}}, tmp_path / "c")
    assert not os.path.exists(tmp_path / "c")
    assert os.listdir(tmp_path) == []  # nothing left behind
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="cycle"):
        ck.save(loop, tmp_path / "c")


def test_trusted_save_pickles_what_json_cannot_hold(tmp_path):
    point = collections.namedtuple("Point", "x y")  # local: pickled by reference would fail
    state = {"frac": __import__("fractions").Fraction(1, 3), "t": torch.ones(2)}
    ck.save(state, tmp_path / "c", trusted=True)
    out = ck.load(tmp_path / "c", trusted=True)
    assert out == {"frac": state["frac"], "t": out["t"]} and torch.equal(out["t"], state["t"])
    with pytest.raises(Exception):
        ck.save({"p": point(1, 2)}, tmp_path / "d", trusted=True)  # unpicklable local class
    assert not os.path.exists(tmp_path / "d")


def test_partial_loads_read_only_what_is_asked(tmp_path):
    model = {"fc.weight": torch.randn(64, 32), "fc.bias": torch.randn(64)}
    state = {"model": model, "optim": {"state": {0: {"exp_avg": torch.randn(64, 32)}}, "lr": 0.1}, "step": 7}
    ck.save(state, tmp_path / "c")
    got = ck.load(tmp_path / "c", keys=["model", ["optim", "lr"], ["optim", "state", 0, "exp_avg"], "step"])
    assert set(got) == {"model", ("optim", "lr"), ("optim", "state", 0, "exp_avg"), "step"}
    assert torch.equal(got["model"]["fc.weight"], model["fc.weight"])
    assert got[("optim", "lr")] == 0.1 and got["step"] == 7
    assert torch.equal(got[("optim", "state", 0, "exp_avg")], state["optim"]["state"][0]["exp_avg"])

    with ck.Checkpoint(tmp_path / "c") as c:
        assert c.keys() == ["model", "optim", "step"] and "step" in c and len(c) == 3
        assert torch.equal(c["model"]["fc.bias"], model["fc.bias"])
        info = c.arrays()
        assert info[("model", "fc.weight")] == {"kind": "torch", "dtype": "float32", "shape": [64, 32], "nbytes": 8192}
        with pytest.raises(KeyError, match="nope"):
            c["nope"]
        with pytest.raises(KeyError):
            c.load([["model", "fc.weight", "deeper"]])
    with pytest.raises(TypeError):
        ck.load(tmp_path / "c", keys="model")
    with pytest.raises(ValueError, match="closed"):
        c.keys()  # the Checkpoint above was closed by its with block


def test_large_tensors_split_into_records_and_files(tmp_path):
    big = torch.randn(300_000)  # 1.2 MB
    small = [torch.randn(n) for n in range(1, 200)]
    ck.save({"big": big, "small": small}, tmp_path / "c", chunk_bytes=100_000, file_bytes=500_000)
    files = sorted(f for f in os.listdir(tmp_path / "c") if f.startswith("data-"))
    assert len(files) >= 3
    out = ck.load(tmp_path / "c")
    assert torch.equal(out["big"], big)
    assert all(torch.equal(a, b) for a, b in zip(out["small"], small))
    with pytest.raises(ValueError):
        ck.save({"x": big}, tmp_path / "d", chunk_bytes=0)


def test_map_location(tmp_path):
    ck.save({"t": torch.ones(2), "n": np.ones(2)}, tmp_path / "c")
    out = ck.load(tmp_path / "c", map_location="cpu")
    assert out["t"].device.type == "cpu" and isinstance(out["n"], np.ndarray)
    seen = []
    out = ck.load(tmp_path / "c", map_location=lambda t, dev: seen.append(dev) or t * 2)
    assert seen == ["cpu"] and torch.equal(out["t"], torch.full((2,), 2.0))
    out = ck.load(tmp_path / "c", map_location={"cpu": "cpu"})
    assert torch.equal(out["t"], torch.ones(2))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            ck.load(tmp_path / "c", map_location="cuda")


def test_root_may_be_any_supported_value(tmp_path):
    for i, obj in enumerate([torch.arange(4), [1, torch.ones(1)], "just a string", None]):
        ck.save(obj, tmp_path / f"c{i}")
        out = ck.load(tmp_path / f"c{i}")
        if isinstance(obj, list):
            assert out[0] == 1 and torch.equal(out[1], obj[1])
        elif isinstance(obj, torch.Tensor):
            assert torch.equal(out, obj)
        else:
            assert out == obj
    with ck.Checkpoint(tmp_path / "c1") as c:
        with pytest.raises(TypeError, match="not a dict"):
            c.keys()
        assert c.load([[1]]) == {(1,): c.load([[1]])[(1,)]}


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4)
    | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=5) | st.integers() | st.tuples(st.integers(), st.text(max_size=3)), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plain)
def test_encoding_round_trips_any_plain_structure(obj):
    enc = Encoder()
    tree = enc.encode(obj)
    assert enc.arrays == [] and enc.pickles == []
    import json

    again = json.loads(json.dumps(tree, allow_nan=False))
    out = Decoder("test", None, None).decode(again)
    assert out == obj and type(out) is type(obj)
