"""One atomic training state: model, optimizer, loader state, RNG states, dataset fingerprint."""

import json
import random
import warnings

import numpy as np
import pytest
import torch

import ffrecord
import ffrecord.checkpoint as ck


class CountingLoader:
    """A stateful loader: remembers how many batches were consumed in the epoch."""

    def __init__(self):
        self.epoch, self.batch = 0, 0

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch, "order": np.arange(10)}

    def load_state_dict(self, state):
        self.epoch, self.batch = state["epoch"], state["batch"]


def make_dataset(directory, records):
    directory.mkdir()
    with ffrecord.FileWriter(str(directory / "shard-0.ffr")) as w:
        for r in records:
            w.write_one(r)
    return str(directory)


def draw():
    return (random.random(), float(np.random.rand()), float(torch.rand(1)))


def test_training_state_round_trip_restores_everything(tmp_path):
    data = make_dataset(tmp_path / "data", [b"a", b"bb", b"ccc"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    loader = CountingLoader()
    loader.epoch, loader.batch = 2, 17
    random.seed(1), np.random.seed(2), torch.manual_seed(3)

    state = ck.training_state(model=model, optimizer=opt, loader=loader, dataset=data, step=123)
    expected_draws = draw()  # what the RNGs give right after the snapshot
    ck.save(state, tmp_path / "ckpt")

    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1.0)
    loader2 = CountingLoader()
    draw(), draw()  # move the RNGs on
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same dataset: no warning
        loaded = ck.load(tmp_path / "ckpt", dataset=data)
        ck.restore_training_state(loaded, model=model2, optimizer=opt2, loader=loader2, dataset=data)
    assert draw() == expected_draws
    assert loaded["step"] == 123
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.state_dict()["param_groups"][0]["lr"] == 1e-3
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for name in s1[k]:
            assert torch.equal(torch.as_tensor(s1[k][name]), torch.as_tensor(s2[k][name]))
    assert (loader2.epoch, loader2.batch) == (2, 17)


def test_a_different_dataset_warns_clearly(tmp_path):
    data = make_dataset(tmp_path / "data", [b"a", b"b"])
    other = make_dataset(tmp_path / "other", [b"a", b"c"])
    ck.save(ck.training_state(dataset=data, step=1), tmp_path / "ckpt")
    with pytest.warns(ck.DatasetMismatchWarning, match="different dataset"):
        loaded = ck.load(tmp_path / "ckpt", dataset=other)
    with pytest.warns(ck.DatasetMismatchWarning, match="different dataset"):
        ck.restore_training_state(loaded, dataset=other, rng=False)
    ck.save({"step": 1}, tmp_path / "plain")
    with pytest.warns(ck.DatasetMismatchWarning, match="no dataset fingerprint"):
        ck.load(tmp_path / "plain", dataset=data)


def test_fingerprint_follows_the_manifest_or_the_files(tmp_path):
    data = make_dataset(tmp_path / "data", [b"x" * 100, b"y"])
    fp = ck.dataset_fingerprint(data)
    assert fp.startswith("sha256:") and ck.dataset_fingerprint(data) == fp
    assert ck.dataset_fingerprint(fp) == fp
    # The same shards in the same order are the same dataset, however they are named...
    assert ck.dataset_fingerprint(str(tmp_path / "data" / "shard-0.ffr")) == fp
    # ...and one changed record makes another one.
    assert ck.dataset_fingerprint(make_dataset(tmp_path / "changed", [b"x" * 100, b"z"])) != fp
    (tmp_path / "data" / "index.json").write_text(json.dumps({"shards": [{"path": "shard-0.ffr", "records": 2}]}))
    with_manifest = ck.dataset_fingerprint(data)
    assert with_manifest != fp
    (tmp_path / "data" / "index.json").write_text(json.dumps({"shards": [{"path": "shard-0.ffr", "records": 3}]}))
    assert ck.dataset_fingerprint(data) != with_manifest
    with pytest.raises(FileNotFoundError):
        ck.dataset_fingerprint(str(tmp_path / "nope.ffr"))


def test_rng_helpers(tmp_path):
    state = ck.capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    first = draw()
    ck.restore_rng_state(state)
    assert draw() == first
    ck.save(state, tmp_path / "rng")
    ck.restore_rng_state(ck.load(tmp_path / "rng"))
    assert draw() == first
    with pytest.raises(TypeError):
        ck.restore_rng_state([1, 2])


def test_restore_needs_the_entries_it_is_asked_for():
    with pytest.raises(KeyError, match="optimizer"):
        ck.restore_training_state({"model": {}}, optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))
    with pytest.raises(ValueError, match="clashes"):
        ck.training_state(dataset="sha256:00", dataset_fingerprint="sha256:11")
