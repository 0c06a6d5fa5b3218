"""The code blocks of README.md and of every docs/*.md page, run as the pages show them
(issues 17 and 25).

Every fenced block of every page is one test:

- ``python``: run with this interpreter in a fresh folder. A fragment that uses names
  defined elsewhere (``X``, ``model.npz``) gets a small preamble from ``PREAMBLES``, keyed
  by a distinctive line of the block, and ``CHECKS`` can verify what its comments claim.
  A block whose first line is ``# NAME.py`` is written to NAME.py, and its page's
  inline commands that use ``NAME:`` are run beside it.
- ``sh``: run with bash (``set -e -o pipefail``) in a fresh folder, the venv's ``python``
  and ``mpirun`` first on PATH; ``SETUPS`` makes the files a block reads, ``CHECKS``
  verifies what its comments claim; ``CUSTOM`` runs a block that needs a hand (a Ctrl-C).
- ``text`` starting with ``$ COMMAND``: a sample of COMMAND's output. The command is run
  and each sample line must match a line of the real output, in order, with every number
  free and the machine-dependent parts (MPI library, BLAS, where the thread count came
  from) free too: the shapes of the lines, not their numbers.
- Anything else is listed in ``SKIP`` with the reason. A block that is neither run nor
  listed fails, and so does a ``SKIP`` (or any other) key that matches no block, or
  several, across all pages: a new block cannot go untested and a stale entry cannot
  linger.

The inline commands that complete a block (the user schedule's command line, and
``--config model.toml --save again.npz``) are run too, and every relative link of every
page must name a file (and heading) that exists.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The pages whose blocks run: the front page and every page of docs/.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent  # the venv's python, mpirun, mpiexec
TIMEOUT = 90  # seconds, per subprocess: a hang fails the test instead of stalling CI


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    page: str = "README.md"  # relative to the repository

    @property
    def id(self) -> str:
        first = next((x for x in self.text.splitlines() if x.strip()), "")
        first = first.removeprefix("$ ")
        where = f"{Path(self.page).stem}-L{self.line}-{self.lang or 'plain'}-"
        return where + re.sub(r"[^\w.:-]+", "_", first)[:48]


_FENCED = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    blocks = []
    for m in _FENCED.finditer(text):
        blocks.append(Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1, page))
    return blocks


TEXTS = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in PAGES}
BLOCKS = [block for page, text in TEXTS.items() for block in readme_blocks(text, page)]

# --- what cannot run here ---------------------------------------------------------

SKIP = {
    "pip install '.[mpich]' && mpirun -n 4 python -m distnn.train": (
        "makes a venv and installs from PyPI (network); CI installs the same package and "
        "extras, and the command it ends with is run by the sample of its output"
    ),
    "pip install -e '.[mpich,test,plot,tensorboard]' && scripts/test.sh": (
        "installs from PyPI (network) and runs the whole suite, this file included: "
        "that is CI's own job"
    ),
    "sbatch scripts/slurm/train.sbatch --epochs 200 --save model.npz": (
        "needs a Slurm cluster; tests/test_slurm.py runs train.sbatch on a local Slurm"
    ),
    "module load openmpi": (
        "a cluster's environment modules, system MPI and srun, and a pip install; "
        "tests/test_system_mpi.py checks the install line and a system MPICH"
    ),
    "  engine/     the NumPy engine of MATH.md": (
        "the package's file tree: neither a command nor a command's output"
    ),
    # docs/scaling.md: measurements of minutes, recorded with their machine and commit.
    "python scripts/scaling.py --quick": (
        "the full sweeps take minutes on 2 cores; tests/test_scaling.py runs `--quick` end "
        "to end and `--model-only` with a cluster's numbers"
    ),
    "#SBATCH --nodes=4 --ntasks-per-node=32": "needs a 4-node Slurm allocation",
    "python -m distnn.scaling --ranks 1,2 --batches 8..512": (
        "a 3-minute sweep; tests/test_sweep.py runs the same command on a tiny grid, and "
        "--plot-only from a CSV"
    ),
    "t_comp = α_c + β_c·b": "the scaling model's formulas: neither a command nor its output",
    "python scripts/scaling.py --plot-dir docs": (
        "a 7-minute measurement that rewrites docs/*.png; tests/test_scaling.py runs the script"
    ),
    "Allreduce fit at 2 ranks: α = 2.21": (
        "the recorded output of one measurement (its machine and commit are stated): the "
        "numbers are the record, not a shape to match"
    ),
    "Allreduce ms │ strong: 256 global": (
        "the recorded projection from that measurement's fit; tests/test_scaling.py checks "
        "the model by hand"
    ),
}

# --- what fragments need --------------------------------------------------------------

_DIGITS_ROWS = """\
import numpy as np

import distnn
from distnn.data import load_dataset

digits = load_dataset("digits")
X = digits.x[:100]
Y = np.eye(10, dtype=np.float32)[digits.labels[:100]]
"""

PREAMBLES = {
    # The Network tour: X, Y, a model.npz and raw rows to predict on.
    "net.gradient(X, Y)": _DIGITS_ROWS
    + """\
X_raw = X
distnn.Network([64, 16, 10], seed=1).save("model.npz")
""",
}

# Python appended to a block (python blocks) or run after it (sh blocks, as a function).
_NETWORK_CLAIMS = """
# What the comments claim, on a fresh network of the block's first line.
net = distnn.Network([64, 32, 10], activations="sigmoid", loss="squared", seed=0)
assert net.params.dtype == np.float32 and net.params.ndim == 1, "one float32 buffer"
assert net.weights[0].shape == (32, 64), net.weights[0].shape
assert np.shares_memory(net.weights[0], net.params), "W(1) is a view"
a = net.forward(X)
assert a.shape == (len(X), 10), a.shape
assert np.isclose(net.loss(X, Y), np.mean(np.sum((a - Y) ** 2, axis=1)), rtol=1e-5)
assert net.gradient(X, Y).shape == net.params.shape
loaded = distnn.Network.load("model.npz")
assert loaded.predict(X_raw).shape == (len(X_raw), 10)
assert loaded.predict_classes(X_raw).shape == (len(X_raw),)
print("claims hold")
"""


def _check_fit_block(path: Path, out: str) -> None:
    assert re.search(r"^test accuracy \d+\.\d\d%$", out, re.M), out
    assert (path / "digits-model.npz").is_file()


def _check_evaluate_block(path: Path, out: str) -> None:
    import json

    report = json.loads((path / "eval.json").read_text())
    assert 0 <= report["accuracy"] <= 1
    assert np.load(path / "outputs.npy").shape == (20, 10)
    classes = (path / "classes.csv").read_text().splitlines()
    assert classes[0] == "class" and len(classes) == 21, classes[:3]
    assert (path / "curves.png").stat().st_size > 0


def _check_tour_block(path: Path, out: str) -> None:
    assert re.search(r"^confusion matrix", out, re.M), out  # evaluate's report
    classes = (path / "classes.csv").read_text().splitlines()
    assert classes[0] == "class" and len(classes) == 21, classes[:3]
    assert (path / "curves.png").stat().st_size > 0


def _check_identical_hashes(path: Path, out: str) -> None:
    hashes = [line.split()[0] for line in out.splitlines() if line.endswith(".npz")]
    assert len(hashes) == 4 and len(set(hashes)) == 1, out  # "four identical hashes"


def _check_supervised_run(path: Path, out: str) -> None:
    assert "distnn.launch: attempt 1: 4 rank(s) from step 0" in out, out
    assert re.search(r"^distnn.launch: training finished; 1 attempt\(s\)", out, re.M), out
    events = [json.loads(x) for x in (path / "m.jsonl").read_text().splitlines() if '"event"' in x]
    assert [e["event"] for e in events] == ["attempt", "attempt_end", "summary"], events


CHECKS: dict[str, str | Callable[[Path, str], None]] = {
    "net.gradient(X, Y)": _NETWORK_CLAIMS,
    'print(f"test accuracy {report': _check_fit_block,
    "python -m distnn.evaluate model.npz --dataset digits --json eval.json": _check_evaluate_block,
    "sha256sum m*.npz": _check_identical_hashes,
    "python -m distnn.predict model.npz rows.csv -o classes.csv --classes": _check_tour_block,
    "python -m distnn.launch --max-ranks 4": _check_supervised_run,
}

# Files a block reads, made first (bash).
SETUPS = {
    "python -m distnn.predict model.npz rows.csv -o classes.csv --classes": """
python -c '
import numpy as np
from distnn.data import load_dataset
np.savetxt("rows.csv", load_dataset("digits").x_test[:20], delimiter=",", fmt="%.4f")
'
""",
    "python -m distnn.evaluate model.npz --dataset digits --json eval.json": """
mkdir run1 run2
python -m distnn.train --epochs 2 --save model.npz --metrics run1/m.jsonl --quiet
mpirun -n 4 python -m distnn.train --epochs 2 --metrics run2/m.jsonl --quiet
python -c '
import numpy as np
from distnn.data import load_dataset
x = load_dataset("digits").x_test[:20]
np.save("inputs.npy", x)
np.savetxt("inputs.csv", x, delimiter=",", fmt="%.4f")
'
""",
}


def _run_preemption_block(block: Block, path: Path) -> None:
    """Train with checkpoints; stop it as Ctrl-C or scancel would (SIGTERM to mpiexec)
    after its first checkpoint; the comment's message; then resume as written."""
    start, comment, resume = (x for x in block.text.splitlines() if x.strip())
    assert comment.startswith("#"), comment
    job = subprocess.Popen(
        shlex.split(start), cwd=path, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not list((path / "ck").glob("*.npz")) and job.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.02)
        job.send_signal(signal.SIGTERM)
        out, err = job.communicate(timeout=TIMEOUT)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
    assert job.returncode == 75, f"status {job.returncode}\n{out}\n{err}"
    quoted = re.search(r'"(.*)"', comment).group(1)  # the message the comment shows
    assert re.search(_sample_pattern(quoted), out + err, re.M), f"{quoted!r} not in\n{err}"
    result = _bash(resume, path)
    assert re.search(r"^resuming at epoch \d+, step \d+$", result.stdout, re.M), result.stdout
    assert re.search(r"^done: .* on 2 rank\(s\)", result.stdout, re.M), result.stdout


CUSTOM = {"--checkpoint-dir ck --checkpoint-every 100": _run_preemption_block}


# --- how blocks are run -----------------------------------------------------------------


def _keyed(table: dict, block: Block):
    hits = [value for key, value in table.items() if key in block.text]
    assert len(hits) <= 1, f"block at line {block.line} matches several keys"
    return hits[0] if hits else None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # The checkout's package, whichever distnn the venv holds.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(args: list[str], path: Path) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(
            args, cwd=path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{args} hung for {TIMEOUT} s:\n{e.stdout}\n{e.stderr}")
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n"
        f"{result.stderr}"
    )
    return result


def _bash(script: str, path: Path) -> subprocess.CompletedProcess:
    return _run(["bash", "-e", "-o", "pipefail", "-c", script], path)


def _python(source: str, path: Path, name: str = "block.py") -> subprocess.CompletedProcess:
    (path / name).write_text(source, encoding="utf-8")
    return _run([sys.executable, name], path)


_NUMBER = r"\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
# Parts of a sample line that depend on the machine, not on distnn: free in the match.
_MACHINE = (
    r"(?<=^distnn \d\.\d\.\d \| ).+?(?= \| \d+ rank\(s\))",  # the MPI library
    r"(?<=\| BLAS ).+?(?=, \d+ thread\(s\) per rank)",  # the BLAS and its CPU kernel
    r"(?<=thread\(s\) per rank \().+(?=\)$)",  # where the thread count came from
)


def _sample_pattern(line: str) -> str:
    """A regex for ``line`` with its numbers, ``…`` and machine-dependent parts free."""
    spans = [(m.start(), m.end(), ".+?") for p in _MACHINE for m in re.finditer(p, line)]
    spans += [(m.start(), m.end(), ".*?") for m in re.finditer("…", line)]
    taken = [range(a, b) for a, b, _ in spans]
    spans += [
        (m.start(), m.end(), _NUMBER)
        for m in re.finditer(_NUMBER, line)
        if not any(m.start() in r for r in taken)
    ]
    pattern, at = "^", 0
    for a, b, free in sorted(spans):
        pattern += re.escape(line[at:a]) + free
        at = b
    return pattern + re.escape(line[at:]) + "$"


def _required(line: str, command: str) -> bool:
    """Lines printed only on some machines are checked only where they are printed."""
    ranks = re.search(r"-n (\d+)", command)
    if "(oversubscribed)" in line:  # more ranks than usable cores
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        return bool(ranks) and int(ranks.group(1)) > (cores or os.cpu_count() or 1)
    return True


def _check_sample(block: Block, path: Path) -> None:
    lines = block.text.splitlines()
    command = lines[0].removeprefix("$ ")
    for rel in re.findall(r"\b(scripts/\S+)", command):  # the repository files it runs
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, path / rel)
    out = _bash(command, path).stdout.splitlines()
    at = 0
    for line in lines[1:]:
        if line.strip() in ("...", "…", "") or not _required(line, command):
            continue
        pattern = re.compile(_sample_pattern(line))
        found = next((i for i in range(at, len(out)) if pattern.match(out[i])), None)
        assert found is not None, (
            f"{block.page} sample line (line {block.line}):\n  {line}\nhas no match, after the "
            f"lines matched before it, in the output of `{command}`:\n" + "\n".join(out)
        )
        at = found + 1


def _inline_commands(module: str, page: str) -> list[str]:
    """The page's inline `mpirun …`/`python …` commands that name ``module:``."""
    return re.findall(rf"`((?:mpirun|mpiexec|python)\b[^`]*\b{module}:[^`]*)`", TEXTS[page])


def _module_name(block: Block) -> str | None:
    """NAME for a python block that starts with ``# NAME.py``."""
    named = re.fullmatch(r"# (\w+)\.py", block.text.partition("\n")[0])
    return named.group(1) if block.lang == "python" and named else None


def _run_block(block: Block, path: Path) -> None:
    check = _keyed(CHECKS, block)
    custom = _keyed(CUSTOM, block)
    if custom:
        custom(block, path)
    elif block.lang == "python":
        module = _module_name(block)
        if module:  # a module the page's commands use
            (path / f"{module}.py").write_text(block.text, encoding="utf-8")
            commands = _inline_commands(module, block.page)
            assert commands, f"no command of {block.page} uses {module}.py"
            for command in commands:
                out = _bash(command, path).stdout
                assert re.search(r"^done: test accuracy", out, re.M), out
                assert f"{module}:" in out, f"the header names the schedule:\n{out}"
            return
        source = (_keyed(PREAMBLES, block) or "") + block.text
        if isinstance(check, str):
            source += check
        out = _python(source, path).stdout
        if callable(check):
            check(path, out)
    elif block.lang == "sh":
        setup = _keyed(SETUPS, block)
        if setup:
            _bash(setup, path)
        out = _bash(block.text, path).stdout
        if callable(check):
            check(path, out)
    elif block.lang == "text" and block.text.startswith("$ "):
        _check_sample(block, path)
    else:
        pytest.fail(
            f"{block.page} block at line {block.line} ({block.lang or 'no language'}) is neither "
            "run nor listed in SKIP: give it a way to run here, or a reason in SKIP"
        )


def _params():
    for block in BLOCKS:
        # An MPI job of 2-4 ranks on 2 cores takes seconds: slow (CI still runs it).
        runs = block.text + "".join(_inline_commands(_module_name(block) or "-", block.page))
        marks = [pytest.mark.slow] if "mpirun" in runs or "distnn.launch" in runs else []
        yield pytest.param(block, marks=marks, id=block.id)


@pytest.mark.parametrize("block", list(_params()))
def test_readme_block(block: Block, tmp_path: Path) -> None:
    reason = _keyed(SKIP, block)
    if reason:
        pytest.skip(reason)
    _run_block(block, tmp_path)


def test_every_key_matches_one_block() -> None:
    """A SKIP (or preamble, check, setup) entry must name exactly one block of all pages."""
    for name, table in [
        ("SKIP", SKIP), ("PREAMBLES", PREAMBLES), ("CHECKS", CHECKS), ("SETUPS", SETUPS),
        ("CUSTOM", CUSTOM),
    ]:  # fmt: skip
        for key in table:
            hits = [f"{b.page}:{b.line}" for b in BLOCKS if key in b.text]
            assert len(hits) == 1, f"{name} key {key!r} matches blocks at {hits}"


def test_config_file_repeats_a_run(tmp_path: Path) -> None:
    """The options table: every run writes its configuration beside its outputs, and
    ``--config model.toml --save again.npz`` repeats it (same weights)."""
    options = "--config model.toml --save again.npz"
    assert f"`{options}` repeats it" in TEXTS["docs/options.md"]
    _bash("python -m distnn.train --epochs 2 --save model.npz --quiet", tmp_path)
    assert (tmp_path / "model.toml").is_file()
    _bash(f"python -m distnn.train {options} --quiet", tmp_path)
    first, again = np.load(tmp_path / "model.npz"), np.load(tmp_path / "again.npz")
    assert sorted(first.files) == sorted(again.files)
    for name in first.files:
        assert np.array_equal(first[name], again[name]), name


def test_sample_pattern() -> None:
    """Numbers and machine parts are free; words and separators are not."""
    pattern = _sample_pattern("epoch 1/40  loss 0.9885  110,543 samples/s")
    assert re.match(pattern, "epoch 12/40  loss 0.0123  1,234,567 samples/s")
    assert not re.match(pattern, "epoch 12/40 loss 0.0123  1,234,567 samples/s")
    header = (
        "distnn 0.1.0 | MPICH Version: 5.0.2 | 4 rank(s) | BLAS openblas 0.3.31 (SkylakeX), "
        "1 thread(s) per rank (2 cores / 4 ranks on the node)"
    )
    assert re.match(
        _sample_pattern(header),
        "distnn 0.1.0 | Open MPI v4.1.4 | 4 rank(s) | BLAS mkl 2024.1 (avx512), "
        "2 thread(s) per rank (from OMP_NUM_THREADS)",
    )
    assert re.match(
        _sample_pattern("done: 82.22%, … on 4 rank(s)"), "done: 1.00%, a, b on 4 rank(s)"
    )


# --- links between the pages ------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    prose = _FENCED.sub("", text)
    return {_anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose, re.M)}


def _relative_links(text: str) -> list[str]:
    """Every link and image target of the page's prose that is not a URL."""
    prose = _FENCED.sub("", text)
    targets = re.findall(r"\]\(([^)\s]+)\)", prose)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", list(TEXTS))
def test_relative_links_resolve(page: str) -> None:
    """A link from one page to another file (and heading) names one that exists."""
    links = _relative_links(TEXTS[page])
    for link in links:
        target, _, anchor = link.partition("#")
        path = (ROOT / page).parent / target if target else ROOT / page
        assert path.resolve().exists(), f"{page}: link {link!r}: no {path}"
        if anchor and path.suffix == ".md":
            headings = _anchors(path.read_text(encoding="utf-8"))
            assert anchor in headings, f"{page}: link {link!r}: no heading #{anchor} in {path}"


def test_link_checks_see_links() -> None:
    """The link finder finds links, anchors are GitHub's, and code blocks are not prose."""
    text = "See [a](docs/a.md#x-y) and ![p](p.png), [w](https://x.org).\n```sh\n[c](no.md)\n```\n"
    assert _relative_links(text) == ["docs/a.md#x-y", "p.png"]
    assert _anchor("Your cluster's MPI") == "your-clusters-mpi"
    assert _anchor("Surviving failures: `distnn.launch`") == "surviving-failures-distnnlaunch"
    assert "docs/clusters.md#your-clusters-mpi" in _relative_links(TEXTS["README.md"])
