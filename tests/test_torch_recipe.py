"""docs/TORCH.md's recipe, from an image folder to training batches, run as
written: the test takes the shell and Python blocks out of that section and
runs them on a small image folder it makes, so the doc and the code cannot
drift apart."""

import os
import re
import shlex

import numpy as np
import pytest

from ffrecord.cli import main

Image = pytest.importorskip("PIL.Image")
torch = pytest.importorskip("torch")

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "TORCH.md")
SECTION = "## From an image folder to training batches"
CLASSES = ["bird", "cat", "dog"]
PER_CLASS = 4


def recipe_blocks():
    """(shell commands, python code) of the recipe section of docs/TORCH.md."""
    text = open(DOC, encoding="utf-8").read()
    assert SECTION in text, f"{DOC} lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```sh\n(.*?)```", section, re.S)
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(shell) == 1 and len(code) == 1, "the recipe has one shell block and one Python block"
    return [line for line in shell[0].splitlines() if line.strip()], code[0]


@pytest.fixture
def recipe_dir(tmp_path, monkeypatch):
    """An image folder as the recipe expects it (images/<class>/<file>), of
    several sizes, modes and formats, converted by the recipe's own command."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (tmp_path / "images" / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            h, w = 20 + 3 * k, 17 + 5 * c
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if k % 2:
                image.convert("L").save(tmp_path / "images" / name / f"{k}.png")
            else:
                image.save(tmp_path / "images" / name / f"{k}.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    commands, _ = recipe_blocks()
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "ffrecord", command
        assert main(argv[1:] + ["--quiet"]) == 0, command
    return tmp_path


def test_the_recipe_gives_batches_of_tensors_and_trains(recipe_dir):
    _, code = recipe_blocks()
    ns = {"__name__": "recipe"}
    exec(compile(code, DOC, "exec"), ns)

    loader = ns["make_loader"]("train/", batch_size=5, num_workers=2)
    size = ns["SIZE"]
    seen = []
    for images, labels in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, size, size)
        assert labels.dtype == torch.int64 and labels.shape == (images.shape[0],)
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
        seen += labels.tolist()
    # One epoch: every image once, with the label of its class directory.
    assert sorted(seen) == sorted(c for c in range(len(CLASSES)) for _ in range(PER_CLASS))
    assert loader.dataset.reader.metadata["classes"] == CLASSES

    model = ns["train"](ns["make_loader"]("train/", batch_size=4, num_workers=0), epochs=2)
    assert model(torch.zeros(1, 3, size, size)).shape == (1, len(CLASSES))


def test_the_recipe_as_a_script(recipe_dir, capsys):
    _, code = recipe_blocks()
    exec(compile(code, DOC, "exec"), {"__name__": "__main__"})
    assert re.search(r"epoch 0: loss \d+\.\d{3}", capsys.readouterr().out)


def test_the_recipe_on_a_missing_dataset_fails_at_once(recipe_dir):
    _, code = recipe_blocks()
    ns = {"__name__": "recipe"}
    exec(compile(code, DOC, "exec"), ns)
    with pytest.raises(FileNotFoundError):
        ns["make_loader"]("no-such-dataset/")
