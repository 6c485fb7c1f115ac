"""ROCStories-protocol text infilling: five-sentence stories with hidden middle sentences.

Settings: ``"1/5"`` hides sentence 3; ``"3/5"`` hides sentences 2-4 (only 1 and 5 visible). In
both the hidden sentences form one contiguous span, so a task is ``prefix / middle / suffix``
with ``prefix + middle + suffix == " ".join(sentences)``. Stories come from the official
ROCStories CSV (:func:`read_rocstories_csv`) or, offline, from five-sentence windows of raw
documents (:func:`windows_from_documents`). Generations are scored with ROUGE (:func:`rouge`).
"""
from __future__ import annotations

import csv
import dataclasses
import re
from typing import Sequence

from rouge_score import rouge_scorer

SETTINGS = {"1/5": (2, 3), "3/5": (1, 4)}  # hidden sentences, as a [start, stop) slice
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
_ROC_COLUMNS = ("storyid", "storytitle") + tuple(f"sentence{i}" for i in range(1, 6))
_ABBREVIATIONS = frozenset(
  "mr mrs ms dr prof sr jr st mt vs etc inc ltd co no gen col lt sgt rev e.g i.e u.s a.m p.m"
  .split())
# Candidate end of sentence: terminal punctuation (and closing quotes/brackets) followed by
# whitespace and something that can start a sentence.
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9])")
_TERMINATED = re.compile(r"[.!?][\"')\]]*$")


@dataclasses.dataclass(frozen=True)
class Story:
  """A five-sentence story."""
  story_id: str
  title: str
  sentences: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TextInfillTask:
  """Visible ``prefix`` and ``suffix`` around the hidden reference ``middle``."""
  task_id: str
  setting: str
  prefix: str
  middle: str
  suffix: str


def read_rocstories_csv(path: str, max_stories: int | None = None) -> list[Story]:
  """Stories from an official ROCStories CSV (``storyid, storytitle, sentence1..sentence5``)."""
  stories = []
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    absent = [c for c in _ROC_COLUMNS if c not in (reader.fieldnames or ())]
    if absent:
      raise ValueError(f"{path} lacks ROCStories columns {absent}")
    for row in reader:
      if max_stories is not None and len(stories) >= max_stories:
        break
      stories.append(Story(row["storyid"], row["storytitle"],
                           tuple(" ".join(row[f"sentence{i}"].split()) for i in range(1, 6))))
  return stories


def split_sentences(text: str) -> list[str]:
  """Deterministic rule-based splitter: blank lines end paragraphs, whitespace is normalized.

  A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by whitespace
  and a capital, digit, opening quote or bracket, except after a common abbreviation or a
  single-letter initial.
  """
  sentences = []
  for paragraph in re.split(r"\n\s*\n", text):
    paragraph = " ".join(paragraph.split())
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
      word = paragraph[start:match.start()].rsplit(" ", 1)[-1].lstrip("\"'([").lower()
      if match.group().startswith(".") and (word in _ABBREVIATIONS or
                                            (len(word) == 1 and word.isalpha())):
        continue
      sentences.append(paragraph[start:match.end()].strip())
      start = match.end()
    if paragraph[start:].strip():
      sentences.append(paragraph[start:].strip())
  return sentences


def windows_from_documents(texts: Sequence[str], max_stories: int, min_words: int = 4,
                           max_words: int = 40) -> list[Story]:
  """Non-overlapping windows of five consecutive, well-formed sentences from raw documents.

  A sentence qualifies when it has ``min_words..max_words`` words and ends with terminal
  punctuation; a window never spans a sentence that does not. Documents are read in order.
  """
  stories: list[Story] = []
  for d, text in enumerate(texts):
    window: list[str] = []
    for s, sentence in enumerate(split_sentences(text)):
      if len(stories) >= max_stories:
        return stories
      if not (min_words <= len(sentence.split()) <= max_words and _TERMINATED.search(sentence)):
        window = []
        continue
      window.append(sentence)
      if len(window) == 5:
        stories.append(Story(f"doc{d}/s{s - 4}", "", tuple(window)))
        window = []
  return stories


def make_tasks(stories: Sequence[Story], setting: str) -> list[TextInfillTask]:
  """Infilling tasks for ``setting`` (``"1/5"`` or ``"3/5"``), one per story."""
  if setting not in SETTINGS:
    raise ValueError(f"unknown setting {setting!r}; expected one of {sorted(SETTINGS)}")
  start, stop = SETTINGS[setting]
  tasks = []
  for story in stories:
    if len(story.sentences) != 5:
      raise ValueError(f"story {story.story_id} has {len(story.sentences)} sentences, not 5")
    before, hidden, after = (story.sentences[:start], story.sentences[start:stop],
                             story.sentences[stop:])
    tasks.append(TextInfillTask(task_id=f"{story.story_id}/{setting}", setting=setting,
                                prefix="".join(s + " " for s in before),
                                middle=" ".join(hidden),
                                suffix="".join(" " + s for s in after)))
  return tasks


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measures (x100) of ``rouge-score`` with Porter stemming."""
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"need equally many predictions and references, got "
                     f"{len(predictions)} and {len(references)}")
  scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
  totals = dict.fromkeys(ROUGE_KEYS, 0.0)
  for prediction, reference in zip(predictions, references):
    scores = scorer.score(reference, prediction)
    for key in ROUGE_KEYS:
      totals[key] += scores[key].fmeasure
  return {key: 100.0 * total / len(predictions) for key, total in totals.items()}
