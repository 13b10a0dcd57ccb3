"""TFDS builders for the real corpora, stored as ArrayRecord and read without TensorFlow.

tensorflow-datasets 4.9 builds and reads ``file_format="array_record"`` datasets without TensorFlow
(``builder.as_data_source()`` / ``tfds.data_source``, random access through array_record);
``tfds.load`` and TFRecord need TensorFlow and are not used. The builders build in a few seconds
from the files :mod:`flaxdistil.assets` caches.

Splits are fixed forever: ``english_corpus`` assigns a document to 'heldout' by a hash of its id;
the labelled sets use a seeded permutation over examples sorted by id (stratified by class/genre).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from flaxdistil import assets
from flaxdistil.data import corpora

SPLIT_SEED = 20240613
HELDOUT_PER_MILLE = 20  # ~2% of english_corpus documents

# simplify_brown_tag over the whole corpus, sorted (fixed so reading never rescans the corpus).
_BROWN_TAGS_TEXT = (
    "' '' ( ) * , -- . : `` abl abn abx ap ap$ ap+ap at at+nn at+np be bed bedz beg bem ben ber "
    "bez cc cd cd$ cs do do+ppss dod doz dt dt$ dt+bez dt+md dti dts dts+bez dtx ex ex+bez "
    "ex+hvd ex+hvz ex+md hv hv+to hvd hvg hvn hvz in in+at in+in in+nn in+np in+ppo jj jj$ jj+jj "
    "jjr jjr+cs jjs jjt md md+hv md+ppss md+to nil nn nn$ nn+bez nn+hvd nn+hvz nn+in nn+md nn+nn "
    "nns nns$ nns+md np np$ np+bez np+hvz np+md nps nps$ nr nr$ nr+md nrs od pn pn$ pn+bez "
    "pn+hvd pn+hvz pn+md pp$ pp$$ ppl ppl+vbz ppls ppo ppo+in pps pps+bez pps+hvd pps+hvz pps+md "
    "ppss ppss+bem ppss+ber ppss+bez ppss+hv ppss+hvd ppss+md ppss+vb ql qlp rb rb$ rb+bez rb+cc "
    "rb+cs rbr rbr+cs rbt rn rp rp+in to to+vb uh vb vb+at vb+in vb+jj vb+ppo vb+rp vb+to vb+vb "
    "vbd vbg vbg+to vbn vbn+to vbz wdt wdt+ber wdt+ber+pp wdt+bez wdt+do+pps wdt+dod wdt+hvz wp$ "
    "wpo wps wps+bez wps+hvd wps+hvz wps+md wql wrb wrb+ber wrb+bez wrb+do wrb+dod wrb+doz "
    "wrb+in wrb+md"
)
BROWN_TAGS = tuple(_BROWN_TAGS_TEXT.split())


def is_heldout(doc_id: str) -> bool:
    """Stable held-out assignment: the first 4 bytes of sha1(doc_id) modulo 1000 < 20."""
    digest = hashlib.sha1(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < HELDOUT_PER_MILLE


def split_80_10_10(n: int, seed: int) -> np.ndarray:
    """Split names for n items (in a fixed order): a seeded permutation cut 80/10/10."""
    order = np.random.default_rng(seed).permutation(n)
    names = np.empty(n, dtype=object)
    n_train, n_val = round(0.8 * n), round(0.1 * n)
    names[order[:n_train]] = "train"
    names[order[n_train : n_train + n_val]] = "validation"
    names[order[n_train + n_val :]] = "test"
    return names


class _Builder(tfds.core.GeneratorBasedBuilder):
    """Shared bits; ``_info`` avoids ``dataset_info_from_configs`` (it needs a package dir)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ""
    HOMEPAGE = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9's default touches `importlib_resources`, a dependency only on Python < 3.9.
        return epath.Path(inspect.getfile(cls))

    def _features(self) -> tfds.features.FeaturesDict:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=self._features(),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # sources come from flaxdistil.assets (registry packages), not URLs
        by_split: dict[str, list] = {name: [] for name in self.SPLITS}
        for key, example, split in self._examples():  # read the sources once for all splits
            by_split[split].append((key, example))
        return {name: self._generate_examples(items) for name, items in by_split.items()}

    def _generate_examples(self, items):
        yield from items

    def _examples(self) -> Iterator[tuple[str, dict, str]]:
        raise NotImplementedError


class EnglishCorpus(_Builder):
    """Unlabelled English text for masked-LM distillation: Brown, BBC, movie snippets, WordNet."""

    DESCRIPTION = "Brown (tags stripped) + BBC News + movie snippets + WordNet glosses (20/doc)."
    SPLITS = ("train", "heldout")

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "id": tfds.features.Text(),
                "source": tfds.features.Text(),
                "text": tfds.features.Text(),
            }
        )

    def _examples(self):
        for doc_id, text in corpora.english_documents():
            split = "heldout" if is_heldout(doc_id) else "train"
            yield doc_id, {"id": doc_id, "source": doc_id.split("/")[0], "text": text}, split


class MovieSnippets(_Builder):
    """Rotten Tomatoes sentences with mean human sentiment in [-4, 4]; neutral (0) dropped."""

    DESCRIPTION = "Hutto & Gilbert (ICWSM 2014) movie-review snippets; label = score > 0."
    HOMEPAGE = "https://github.com/cjhutto/vaderSentiment"
    SPLITS = ("train", "validation", "test")

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "id": np.int32,
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["neg", "pos"]),
                "score": np.float32,
            }
        )

    def _examples(self):
        examples = sorted(corpora.movie_snippets(), key=lambda ex: ex["id"])
        for ex, split in zip(examples, split_80_10_10(len(examples), SPLIT_SEED)):
            yield str(ex["id"]), ex, split


class BbcNews(_Builder):
    """BBC News articles (2004-2005) in 5 topics; splits stratified by topic."""

    DESCRIPTION = "BBC News topic classification (Greene & Cunningham, 2006)."
    HOMEPAGE = "http://mlg.ucd.ie/datasets/bbc.html"
    SPLITS = ("train", "validation", "test")

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "id": tfds.features.Text(),
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=list(corpora.BBC_TOPICS)),
            }
        )

    def _examples(self):
        articles = list(corpora.bbc_articles())
        for t, topic in enumerate(corpora.BBC_TOPICS):
            of_topic = [a for a in articles if a[2] == topic]
            for (doc_id, text, _), split in zip(
                of_topic, split_80_10_10(len(of_topic), SPLIT_SEED + t)
            ):
                yield doc_id, {"id": doc_id, "text": text, "label": topic}, split


class BrownPos(_Builder):
    """Brown sentences with simplified POS tags; split by file (per genre: 8th file of 10
    validation, 10th test), so no document contributes to two splits."""

    DESCRIPTION = "Brown corpus POS tagging; tags simplified by corpora.simplify_brown_tag."
    SPLITS = ("train", "validation", "test")

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "id": tfds.features.Text(),
                "tokens": tfds.features.Sequence(tfds.features.Text()),
                "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=list(BROWN_TAGS))),
            }
        )

    def _examples(self):
        counts: dict[str, int] = {}
        for path in corpora.brown_files():
            genre = path.name[:2]
            i = counts[genre] = counts.get(genre, -1) + 1
            split = {7: "validation", 9: "test"}.get(i % 10, "train")
            for j, (tokens, tags) in enumerate(corpora.read_brown_sentences(path)):
                key = f"{path.name}/{j}"
                yield key, {"id": key, "tokens": tokens, "tags": tags}, split


BUILDERS = {
    "english_corpus": EnglishCorpus,
    "movie_snippets": MovieSnippets,
    "bbc_news": BbcNews,
    "brown_pos": BrownPos,
}


def _to_python(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (bytes, str)):
            return [_to_python(v) for v in value]
        return np.asarray(value)
    return value


class DecodedSource:
    """Random access over a TFDS data source with text as ``str`` and sequences as arrays."""

    def __init__(self, source, info=None):
        self.source = source
        self.info = info

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return _to_python(self.source[index])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def default_data_dir() -> str:
    return str(assets.cache_dir() / "tfds")


def builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """One of our builders, prepared (built on first use) as ArrayRecord under ``data_dir``."""
    b = BUILDERS[name](data_dir=data_dir or default_data_dir(), file_format="array_record")
    b.download_and_prepare()
    return b


def load(name: str, split: str, data_dir: str | None = None) -> DecodedSource:
    """Random-access source (``len``, ``[i]`` -> dict) for a dataset split.

    Our datasets (``BUILDERS``) are built on first use into ``data_dir`` (default
    ``cache_dir()/tfds``). Any other name goes to the TFDS catalog through ``tfds.data_source``
    (e.g. ``"wikipedia/20230601.en"``, ``"glue/sst2"``); that needs the dataset published in
    ArrayRecord or prepared by a machine with network access (and, to prepare some, TensorFlow).
    """
    if name in BUILDERS:
        b = builder(name, data_dir)
        if split not in b.info.splits:
            raise ValueError(f"{name} has splits {sorted(b.info.splits)}, not {split!r}")
        return DecodedSource(b.as_data_source(split=split), b.info)
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
    except Exception as e:
        raise ValueError(
            f"{name!r} is not one of flaxdistil's datasets {sorted(BUILDERS)} and the TFDS catalog "
            f"could not provide it as an ArrayRecord data source: {e}"
        ) from e
    return DecodedSource(source, getattr(source, "dataset_info", None))
