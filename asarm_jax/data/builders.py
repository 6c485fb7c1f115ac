"""TFDS builders over local folders: written as array_record, read with ``as_data_source``.

Nothing is downloaded and TensorFlow is never imported. Every file becomes one example
``{"text": str, "path": str}`` (``path`` relative to its source dir) and goes to ``train`` or
``heldout`` by a hash of that path, so a file's split never depends on the rest of the tree.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator, Sequence

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

MAX_FILE_BYTES = 1 << 20


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Options of a folder builder; ``name`` hashes them (see :meth:`FolderBuilder.make_config`).

  Attributes:
    source_dirs: absolute folders to walk; a relative path seen in an earlier dir wins.
    exclude_patterns: ``fnmatch`` globs over the relative posix path (``*`` also matches ``/``).
    extensions: file suffixes to keep, ``""`` for files without one.
    max_files: keep at most this many files (a path-hash sample), 0 = all.
    heldout_fraction: expected fraction of files in ``heldout``.
  """
  source_dirs: tuple[str, ...] = ()
  exclude_patterns: tuple[str, ...] = ()
  extensions: tuple[str, ...] = ()
  max_files: int = 0
  heldout_fraction: float = 0.05


def path_unit_hash(path: str, salt: str = "") -> float:
  """Deterministic uniform ``[0, 1)`` value of a relative path (first 64 bits of the sha1 of
  ``salt + path``). Different salts give independent values: the ``max_files`` sample uses one,
  so that the held-out split (no salt) stays ``heldout_fraction`` of any sample."""
  return int(hashlib.sha1((salt + path).encode("utf-8")).hexdigest()[:16], 16) / 2.0**64


def _read(path: str) -> tuple[str | None, str]:
  """``(text, "")``, or ``(None, why it is skipped)``: not UTF-8, or blank."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError:
    return None, "not UTF-8"
  return (text, "") if text.strip() else (None, "blank")


def describe_skipped(skipped: dict[str, list[str]], shown: int = 3) -> str:
  """``2 not UTF-8 (a.py, b.py), 1 over 1 MiB (big.py)``: counts by reason, a few names each."""
  parts = []
  for why, paths in sorted(skipped.items()):
    names = ", ".join(paths[:shown]) + (", ..." if len(paths) > shown else "")
    parts.append(f"{len(paths)} {why} ({names})")
  return ", ".join(parts)


class _LocalInfo(tfds.core.DatasetInfo):
  """DatasetInfo that never looks for precomputed metadata in tfds's GCS bucket: tfds makes a
  temporary folder for it first, and leaves it behind, even with GCS disabled."""

  def initialize_from_bucket(self) -> None:
    pass


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per text file of a local folder tree, split by path hash."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "The max_files sample is independent of the held-out split: before, "
                            "both took the smallest path hashes, so a sample smaller than "
                            "heldout_fraction of the corpus was all held out."}
  DEFAULT_EXTENSIONS: tuple[str, ...] = ()
  SKIP_DIRS: frozenset[str] = frozenset({"__pycache__"})

  @classmethod
  def default_source_dirs(cls) -> tuple[str, ...]:
    raise ValueError(f"{cls.name} needs source_dirs")

  @classmethod
  def make_config(cls, source_dirs: Sequence[str] = (), exclude_patterns: Sequence[str] = (),
                  extensions: Sequence[str] = (), max_files: int = 0,
                  heldout_fraction: float = 0.05) -> FolderConfig:
    """Resolves defaults and names the config ``opts_<hash of the resolved options>``."""
    options = dict(
        source_dirs=tuple(os.path.realpath(d) for d in source_dirs or cls.default_source_dirs()),
        exclude_patterns=tuple(exclude_patterns),
        extensions=tuple(extensions or cls.DEFAULT_EXTENSIONS),
        max_files=int(max_files),
        heldout_fraction=float(heldout_fraction))
    for d in options["source_dirs"]:
      if not os.path.isdir(d):
        raise FileNotFoundError(f"{cls.name}: source dir {d} does not exist")
    if not 0.0 < options["heldout_fraction"] < 1.0:
      raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    description = json.dumps({"builder": cls.name, **options}, sort_keys=True)
    digest = hashlib.sha1(description.encode("utf-8")).hexdigest()[:12]
    return FolderConfig(name=f"opts_{digest}", description=description, **options)

  def _info(self) -> tfds.core.DatasetInfo:
    return _LocalInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                             "path": tfds.features.Text()}))

  def _log_download_bytes(self) -> None:
    """Replaces tfds's "Downloading and preparing" print: nothing is downloaded."""
    logging.info("Preparing dataset %s from local files in %s", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Dataset %s ready in %s", self.name, self.data_dir)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Local files only.
    fraction = self.builder_config.heldout_fraction
    files = self._list_files()
    splits = {"train": [f for f in files if path_unit_hash(f[0]) >= fraction],
              "heldout": [f for f in files if path_unit_hash(f[0]) < fraction]}
    for split, split_files in splits.items():
      if not split_files:  # tfds cannot write an empty split.
        raise ValueError(f"{self.name}: no {split} files among the {len(files)} usable files "
                         f"in {self.builder_config.source_dirs} (heldout_fraction={fraction}); "
                         "add files or change data.heldout_fraction.")
    return {split: self._generate_examples(split_files) for split, split_files in splits.items()}

  def _generate_examples(self, files: list[tuple[str, str]]) -> Iterator[tuple[str, dict]]:
    for rel, full in files:
      text, _ = _read(full)
      if text is not None:
        yield rel, {"text": text, "path": rel}

  def _list_files(self) -> list[tuple[str, str]]:
    """``(relative posix path, absolute path)`` of the kept files, sorted by relative path.

    Kept: wanted suffix, outside skipped and hidden dirs, not excluded, at most
    ``MAX_FILE_BYTES``, UTF-8 and not blank. Skipped files are counted and named in a warning;
    raises ``ValueError`` if no file is left.
    """
    cfg = self.builder_config
    found, skipped = self._candidates()
    kept = []
    # max_files takes a path-hash sample, independent of the split's hash.
    for rel in sorted(found, key=lambda rel: path_unit_hash(rel, salt="max_files:")):
      if cfg.max_files and len(kept) == cfg.max_files:
        break
      text, why = _read(found[rel])
      if text is None:
        skipped.setdefault(why, []).append(rel)
      else:
        kept.append(rel)
    examined = len(kept) + sum(map(len, skipped.values()))
    if not kept:
      raise ValueError(f"{self.name}: no usable file with suffix {cfg.extensions} in "
                       f"{cfg.source_dirs}: {examined} found"
                       + (f", all skipped: {describe_skipped(skipped)}" if skipped else ""))
    if skipped:  # blank files (empty __init__.py) are routine: a warning only for the others
      level = logging.WARNING if set(skipped) - {"blank"} else logging.INFO
      logging.log(level, "%s: skipped %d of %d files, kept %d: %s.", self.name,
                  examined - len(kept), examined, len(kept), describe_skipped(skipped))
    return [(rel, found[rel]) for rel in sorted(kept)]

  def _candidates(self) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Files with a wanted suffix, outside skipped and hidden dirs and not excluded, as
    ``{relative path: absolute path}``; and those over ``MAX_FILE_BYTES``, by reason."""
    cfg = self.builder_config
    found: dict[str, str] = {}
    too_big: list[str] = []
    for root in cfg.source_dirs:
      for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in self.SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
          full = os.path.join(dirpath, filename)
          rel = os.path.relpath(full, root).replace(os.sep, "/")
          if (rel in found or os.path.splitext(filename)[1] not in cfg.extensions
              or any(fnmatch.fnmatchcase(rel, p) for p in cfg.exclude_patterns)
              or not os.path.isfile(full)):
            continue
          if os.path.getsize(full) > MAX_FILE_BYTES:
            too_big.append(rel)
          else:
            found[rel] = full
    return found, ({f"over {MAX_FILE_BYTES >> 20} MiB": too_big} if too_big else {})


class PythonCode(FolderBuilder):
  """Python source files; by default the running interpreter's standard library without tests."""

  DEFAULT_EXTENSIONS = (".py",)
  SKIP_DIRS = frozenset({"__pycache__", "test", "tests", "idle_test", "site-packages"})

  @classmethod
  def default_source_dirs(cls) -> tuple[str, ...]:
    return (sysconfig.get_paths()["stdlib"],)


class TextFiles(FolderBuilder):
  """Prose files (``.txt``, ``.md``, ``.rst`` by default) of caller-given folders."""

  DEFAULT_EXTENSIONS = (".txt", ".md", ".rst")


BUILDERS: dict[str, type[FolderBuilder]] = {"python_code": PythonCode, "text_files": TextFiles}


def options(config: ml_collections.ConfigDict) -> dict:
  """The options of :meth:`FolderBuilder.make_config` that a ``config.data`` block sets."""
  return dict(source_dirs=config.source_dirs, exclude_patterns=config.exclude_patterns,
              extensions=config.get("extensions", ()), max_files=config.max_files,
              heldout_fraction=config.heldout_fraction)


def _builder(name: str, data_dir: str, options: dict) -> FolderBuilder:
  """Builder ``name`` with ``options`` over ``data_dir`` (nothing is written)."""
  cls = BUILDERS[name]
  return cls(config=cls.make_config(**options), data_dir=data_dir, file_format="array_record")


def is_prepared(name: str, data_dir: str, **options) -> bool:
  """Whether builder ``name`` with ``options`` is prepared in ``data_dir`` (nothing is
  written)."""
  builder = _builder(name, data_dir, options)
  return os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))  # (written last)


def build(name: str, data_dir: str, **options) -> FolderBuilder:
  """Prepares builder ``name`` with ``options`` (see :meth:`FolderBuilder.make_config`) in
  ``data_dir`` unless already there, and returns it; read splits with ``as_data_source()``."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  if not data_dir:
    raise ValueError("data_dir is empty: tfds would build the dataset in the current directory")
  builder = _builder(name, data_dir, options)
  existing = _folders(data_dir)
  try:
    builder.download_and_prepare()
  except BaseException:  # a failure or an interrupt: tfds removed its files, not its folders
    _remove_empty_folders(data_dir, existing)
    raise
  return builder


def _folders(root: str) -> set[str]:
  """Every folder under ``root``, ``root`` included (none if it does not exist)."""
  return {dirpath for dirpath, _, _ in os.walk(root)}


def _remove_empty_folders(root: str, keep: set[str]) -> None:
  """Removes the empty folders under ``root`` (``root`` included) that are not in ``keep``,
  deepest first."""
  for folder in sorted(_folders(root) - keep, key=len, reverse=True):
    if not os.listdir(folder):
      os.rmdir(folder)
