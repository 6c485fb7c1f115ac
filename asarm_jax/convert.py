"""Hugging Face XLNet checkpoint folder -> asarm_jax workdir (``model.arch="xlnet"``).

``python -m asarm_jax.convert --hf_dir=DIR --workdir=OUT [--max_len=512] [--overwrite]``

Reads ``config.json``, ``model.safetensors`` (through ``safetensors.numpy``: no torch) or
``pytorch_model.bin`` (imports torch, only then) and ``spiece.model``; writes OUT/checkpoints/0,
an Orbax checkpoint of the parameters alone (no optimizer state) with the config and tokenizer
that ``--mode=sample``, ``--mode=eval``, ``config.init_from`` and
:func:`asarm_jax.inference.load` read, and OUT/config.py, the config to pass as ``--config`` (for
``--mode=eval``, which requires the checkpoint's model block). To train from the weights, start
a new workdir with ``--config.init_from=OUT`` (or the HF folder). Nothing is downloaded.

The converter holds OUT's lock while it writes (:mod:`asarm_jax.workdir_lock`), refuses an OUT
that holds a checkpoint (``--overwrite`` deletes that run's files first, :data:`RUN_FILES`), and
writes nothing when it fails; its errors are one line (:mod:`asarm_jax.cli`).

Tokenizer adapter: our tokenizers keep ``<pad>, <unk>, </s> (eos), <mask>`` at ids 0..3 and
never sample ids below ``model.num_special_tokens``. XLNet's SentencePiece has
``<unk> <s> </s> <cls> <sep> <pad> <mask> <eod> <eop>`` at 0..8. The converter renumbers the
vocabulary: those four first, then XLNet's other control pieces, then the rest in their order
(:func:`vocab_order`); the embedding rows and the LM-head bias are permuted alike, so the model
is the same function of the text. ``num_special_tokens`` becomes the number of control pieces.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from asarm_jax import checkpoint, cli, config_base, data, models, state, workdir_lock

OURS_FIRST = ("<pad>", "<unk>", "</s>", "<mask>")  # our PAD_ID, UNK_ID, EOS_ID, MASK_ID

_CONTROL, _UNKNOWN = 3, 2  # sentencepiece ModelProto.SentencePiece.Type
# What a run or a conversion wrote in a workdir, deleted by --overwrite (the dataset stays).
RUN_FILES = ("checkpoints", "checkpoints_corrupt", "eval", "tensorboard", "metrics.jsonl",
             "config.py")


def read_state_dict(hf_dir: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 numpy arrays, by HF name."""
  safetensors_path = os.path.join(hf_dir, "model.safetensors")
  bin_path = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.exists(safetensors_path):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    tensors = load_file(safetensors_path)
  elif os.path.exists(bin_path):
    import torch  # pylint: disable=g-import-not-at-top  (only this format needs it)
    tensors = {k: v.float().numpy() for k, v in
               torch.load(bin_path, map_location="cpu", weights_only=True).items()}
  else:
    raise FileNotFoundError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin")
  return {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def model_config(hf: dict, max_len: int, num_special_tokens: int) -> dict[str, Any]:
  """Our ``config.model`` keys for HF XLNet config ``hf`` (config.json); raises ValueError for
  settings the xlnet arch does not reproduce."""
  unsupported = {"attn_type": ("bi", hf.get("attn_type", "bi")),
                 "bi_data": (False, hf.get("bi_data", False)),
                 "d_head": (hf["d_model"] // hf["n_head"],
                            hf.get("d_head", hf["d_model"] // hf["n_head"]))}
  for key, (expected, got) in unsupported.items():
    if got != expected:
      raise ValueError(f"config.json {key}={got!r}: only {expected!r} is supported")
  return dict(arch="xlnet", vocab_size=hf["vocab_size"], num_layers=hf["n_layer"],
              d_model=hf["d_model"], num_heads=hf["n_head"], d_ff=hf["d_inner"],
              max_len=max_len, clamp_len=hf.get("clamp_len", -1),
              activation=hf.get("ff_activation", "gelu"),
              layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
              num_special_tokens=num_special_tokens)


def convert_params(state: dict[str, np.ndarray], num_layers: int) -> dict[str, Any]:
  """``{"params": ...}`` of :class:`asarm_jax.models.xlnet.XLNetTransformer` from HF names.

  The segment parameters (``r_s_bias``, ``seg_embed``) are dropped: with one segment their term
  is a per-row constant that the softmax ignores (see :mod:`asarm_jax.models.xlnet`).
  """
  prefix = "transformer."
  embedding = state[prefix + "word_embedding.weight"]
  if "lm_loss.weight" in state and not np.array_equal(state["lm_loss.weight"], embedding):
    raise ValueError("lm_loss.weight differs from the word embedding: untied heads are not "
                     "supported")
  params: dict[str, Any] = {"embed": {"embedding": embedding},
                            "mask_embedding": state[prefix + "mask_emb"].reshape(-1),
                            "head_bias": state["lm_loss.bias"]}
  for i in range(num_layers):
    layer = lambda name: state[f"{prefix}layer.{i}.{name}"]
    kernel = lambda name: {"kernel": layer(f"rel_attn.{name}")}
    params[f"block_{i}"] = {
        "attention": {"query": kernel("q"), "key": kernel("k"), "value": kernel("v"),
                      "position": kernel("r"),
                      "out": {"kernel": layer("rel_attn.o").transpose(1, 2, 0)},  # h,n,d->n,d,h
                      "content_bias": layer("rel_attn.r_w_bias"),
                      "position_bias": layer("rel_attn.r_r_bias")},
        "ln_attention": {"scale": layer("rel_attn.layer_norm.weight"),
                         "bias": layer("rel_attn.layer_norm.bias")},
        "mlp_in": {"kernel": layer("ff.layer_1.weight").T, "bias": layer("ff.layer_1.bias")},
        "mlp_out": {"kernel": layer("ff.layer_2.weight").T, "bias": layer("ff.layer_2.bias")},
        "ln_mlp": {"scale": layer("ff.layer_norm.weight"), "bias": layer("ff.layer_norm.bias")},
    }
  return {"params": params}


def vocab_order(spiece: bytes) -> tuple[np.ndarray, int]:
  """``(order, num_special)``: our id ``i`` is XLNet's id ``order[i]``; ids below
  ``num_special`` are :data:`OURS_FIRST` and then XLNet's other control pieces."""
  proto = _parse(spiece)
  ids = {p.piece: i for i, p in enumerate(proto.pieces)}
  missing = [piece for piece in OURS_FIRST if piece not in ids]
  if missing:
    raise ValueError(f"spiece.model lacks {missing}: not an XLNet tokenizer")
  first = [ids[piece] for piece in OURS_FIRST]
  special = first + [i for i, p in enumerate(proto.pieces)
                     if p.type in (_CONTROL, _UNKNOWN) and i not in first]
  rest = [i for i in range(len(proto.pieces)) if i not in set(special)]
  return np.asarray(special + rest, np.int32), len(special)


def renumbered_spiece(spiece: bytes, order: np.ndarray) -> bytes:
  """The SentencePiece model with its pieces in ``order`` and our special ids (no BOS)."""
  proto = _parse(spiece)
  pieces = [proto.pieces[int(i)] for i in order]
  copies = [type(p)() for p in pieces]
  for copy, piece in zip(copies, pieces):
    copy.CopyFrom(piece)
  del proto.pieces[:]
  proto.pieces.extend(copies)
  spec = proto.trainer_spec
  spec.pad_id, spec.unk_id, spec.eos_id, spec.bos_id = 0, 1, 2, -1
  spec.bos_piece = "<no-bos>"  # absent: XLNet's <s> stays a control piece, not a BOS
  return proto.SerializeToString()


def permute_vocab(params: dict[str, Any], order: np.ndarray) -> dict[str, Any]:
  """``params`` with the embedding rows and head bias in our id order."""
  inner = dict(params["params"])
  inner["embed"] = {"embedding": inner["embed"]["embedding"][order]}
  inner["head_bias"] = inner["head_bias"][order]
  return {"params": inner}


def _parse(spiece: bytes) -> Any:
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(spiece)
  return proto


def full_config(model: dict[str, Any]) -> ml_collections.ConfigDict:
  """The default config with the converted model block (data.vocab_size and data.seq_len are
  what model.vocab_size and model.max_len refer to)."""
  config = config_base.base_config()
  config.data.vocab_size = model["vocab_size"]
  config.data.seq_len = model["max_len"]
  for key, value in model.items():
    if key not in ("vocab_size", "max_len"):
      config.model[key] = value
  return config


def config_file(model: dict[str, Any], hf_dir: str) -> str:
  """The text of WORKDIR/config.py: ``get_config()`` is :func:`full_config` of ``model``."""
  return (f'"""Written by asarm_jax.convert from {os.path.abspath(hf_dir)}."""\n'
          "from asarm_jax import convert\n\n"
          f"MODEL = {model!r}\n\n\n"
          "def get_config():\n"
          "  return convert.full_config(MODEL)\n")


def _vocab(hf_dir: str) -> tuple[bytes, np.ndarray, int]:
  """``(spiece.model bytes, order, num_special)`` of the HF folder (:func:`vocab_order`)."""
  with open(os.path.join(hf_dir, "spiece.model"), "rb") as f:
    spiece = f.read()
  return (spiece, *vocab_order(spiece))


def tokenizer_model(hf_dir: str) -> bytes:
  """The folder's SentencePiece model renumbered to our ids (no weights are read)."""
  spiece, order, _ = _vocab(hf_dir)
  return renumbered_spiece(spiece, order)


def load(hf_dir: str, max_len: int = 512) -> tuple[dict[str, Any], dict[str, Any], bytes]:
  """``(model block, params, tokenizer model)`` of the HF folder ``hf_dir``, in our form (ids
  renumbered, :func:`vocab_order`); float32 numpy parameters."""
  for name in ("config.json", "spiece.model"):
    if not os.path.isfile(os.path.join(hf_dir, name)):
      raise FileNotFoundError(f"{hf_dir} has no {name}: expected a Hugging Face XLNet folder "
                              "(config.json, model.safetensors or pytorch_model.bin, "
                              "spiece.model)")
  with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  spiece, order, num_special = _vocab(hf_dir)
  params = permute_vocab(convert_params(read_state_dict(hf_dir), hf["n_layer"]), order)
  return model_config(hf, max_len, num_special), params, renumbered_spiece(spiece, order)


def convert(hf_dir: str, workdir: str, max_len: int = 512,
            overwrite: bool = False) -> ml_collections.ConfigDict:
  """Writes ``workdir`` (checkpoint step 0 and config.py) from the HF folder ``hf_dir``; returns
  its config. Holds the workdir's lock; a workdir that holds a checkpoint is refused unless
  ``overwrite`` (then the :data:`RUN_FILES` are deleted first, once the folder has loaded)."""
  with workdir_lock.hold(workdir, "conversion"):
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if os.path.isdir(checkpoint_dir) and os.listdir(checkpoint_dir) and not overwrite:
      raise ValueError(f"{workdir} holds checkpoints ({checkpoint_dir}); convert into a new "
                       "--workdir, or pass --overwrite to delete that run and replace it.")
    model_block, params, spiece = load(hf_dir, max_len)
    tokenizer = data.Tokenizer.from_serialized(spiece)
    config = full_config(model_block)
    model = models.build(config.model)
    mismatch = state.first_mismatch(params, state.abstract_params(model, config.data.seq_len))
    if mismatch:
      raise ValueError(f"converted parameters do not fit the xlnet model of {config.model}: "
                       f"{mismatch}")
    params = jax.tree_util.tree_map(jnp.asarray, params)
    if overwrite:
      _delete(workdir, RUN_FILES)
    _write(workdir, params, checkpoint.meta_for(config, tokenizer.serialized()),
           config_file(model_block, hf_dir))
  return config


def _write(workdir: str, params: Any, meta: dict, config_text: str) -> None:
  """Checkpoint step 0 of ``params`` (into an empty ``checkpoints/``), then ``config.py``; a
  failure or an interrupt leaves neither."""
  path = os.path.join(workdir, "config.py")
  try:
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None,
                                   async_save=False)
    try:
      ckpt.save(0, {"params": params}, {}, meta)
      ckpt.wait()
    finally:
      ckpt.close()
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
      f.write(config_text)
    os.replace(f"{path}.tmp", path)
  except BaseException:
    _delete(workdir, ("checkpoints", "config.py.tmp"))
    raise


def _delete(workdir: str, names: tuple[str, ...]) -> None:
  """Deletes the files and folders ``names`` of ``workdir`` that exist."""
  for name in names:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)


def main(argv: list[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax's progress lines
  args = flags.FLAGS
  with cli.ends_in_one_line(args.verbose):
    config = convert(args.hf_dir, args.workdir, args.max_len, args.overwrite)
  print(f"wrote {args.workdir}: model {dict(config.model)}")


def _define_flags() -> None:
  """Only when run as a program: config files import this module next to main.py's flags."""
  flags.DEFINE_string("hf_dir", None, "HF XLNet checkpoint folder (config.json, weights, "
                      "spiece.model).")
  flags.DEFINE_string("workdir", None, "Workdir to write (its checkpoints/ must not hold one).")
  flags.DEFINE_integer("max_len", 512, "model.max_len and data.seq_len: positions must be below.")
  flags.DEFINE_bool("overwrite", False, "Replace a workdir that holds checkpoints: delete its "
                    "checkpoints, eval results, logs and config.py first (its data/ stays).")
  flags.DEFINE_bool("verbose", False, "Show full tracebacks instead of one-line errors.")
  flags.mark_flags_as_required(["hf_dir", "workdir"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
