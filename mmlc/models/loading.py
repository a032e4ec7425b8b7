"""Building, loading and saving StreamingLM models (safetensors only, no remote code).

- ``load()``: the embedded default model mmlc-tiny (package data, CPU, offline).
- ``load("tiny", init="random", grid=3)``: a preset with random weights and per-field overrides.
- ``load(DIR)``: a folder written by ``model.save_pretrained(DIR)`` (config.json, model.safetensors,
  tokenizer files).
- ``load(vision=DIR, lm=DIR, weights=FILE_OR_DIR)``: transformers folders saved with
  ``save_pretrained`` (a SigLIP/CLIP vision model, a Llama/Qwen2 causal LM with its tokenizer) plus
  mmlc's connector weights.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_model
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from mmlc.config import (FramesConfig, LMConfig, MmlcConfig, TemplateConfig, VisionConfig,
                         apply_overrides)
from mmlc.data.tokenizer import train_tokenizer
from mmlc.errors import CheckpointError, ConfigError
from mmlc.models.layout import StreamLayout
from mmlc.models.presets import PRESETS, preset
from mmlc.models.streaming_lm import StreamingLM

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "assets" / "mmlc-tiny"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of a model's weights (every tensor's name, shape and ~4k evenly strided values),
    cheap even for a large model: what a resumed eval checks to continue with the same weights."""
    import hashlib

    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        flat = t.detach().reshape(-1)
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(flat[::max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def weights_id(name: str | os.PathLike | None, init: str = "pretrained") -> str | None:
    """What identifies the weights ``mmlc.load(name)`` gives, without loading them: for ``mmlc-tiny``
    (or None) or a model folder, a digest of its weights file (its size and three 1 MiB pieces); None
    for a preset with random weights or a name that is no folder. Evals that resume by file (NIAVH
    cells, MMDU predictions) key their records with it, so that retrained weights under the same name
    are not mixed with the old ones' results."""
    import hashlib

    if init != "pretrained":
        return None
    folder = DEFAULT_MODEL if name in (None, "", "mmlc-tiny") else Path(name)
    file = folder / WEIGHTS_FILE
    if not file.is_file():
        return None
    size, piece = file.stat().st_size, 1 << 20
    h = hashlib.sha1(str(size).encode())
    with open(file, "rb") as f:
        for at in (0, max(0, size // 2 - piece // 2), max(0, size - piece)):
            f.seek(at)
            h.update(f.read(piece))
    return h.hexdigest()[:16]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"cpu" -> CPU; "auto" -> CUDA when available; anything torch accepts otherwise."""
    if device is None:
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device {device!r} is not a device: use 'cpu', 'cuda', 'cuda:1' or 'auto'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for CUDA but no CUDA GPU is available here: use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> float32 on CPU, bfloat16 on GPU."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is unknown: use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def byte_tokenizer(template: TemplateConfig):
    """A tokenizer with no merges: the template's special tokens + 256 bytes (any text tokenizes)."""
    return train_tokenizer([], vocab_size=len(template.special_tokens()) + 256, template=template)


def attach_tokenizer(model: StreamingLM, tokenizer) -> StreamingLM:
    vocab = model.lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise CheckpointError(f"the tokenizer has {len(tokenizer)} tokens but the LM's embedding table has {vocab} "
                              "rows: resize the LM's embeddings or use the LM's own tokenizer")
    model.tokenizer = tokenizer
    model.layout = StreamLayout(model.config.template, tokenizer, model.config.frames.tokens_per_frame,
                                model.config.memory.tokens, image_tags=model.config.frames.image_tags,
                                tokens_per_image=model.config.frames.tokens_per_image)
    return model


def build(config: MmlcConfig, tokenizer=None, *, device=None, dtype=None, seed: int | None = None) -> StreamingLM:
    """A model of ``config`` with random weights (``seed`` makes them reproducible)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(dev):
        model = StreamingLM(config)
    model.to(device=dev, dtype=dt).eval()
    return attach_tokenizer(model, tokenizer if tokenizer is not None else default_tokenizer(config))


def default_tokenizer(config: MmlcConfig):
    """The packaged mmlc-tiny tokenizer when it fits the template, else a byte-level one."""
    if (DEFAULT_MODEL / "tokenizer.json").exists():
        saved = json.loads((DEFAULT_MODEL / CONFIG_FILE).read_text()).get("template", {})
        if saved == TemplateConfig(**saved).__dict__ and TemplateConfig(**saved) == config.template:
            return AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    return byte_tokenizer(config.template)


def load(name_or_path: str | os.PathLike | None = None, *, device=None, dtype=None, init: str = "pretrained",
         vision: str | os.PathLike | None = None, lm: str | os.PathLike | None = None,
         weights: str | os.PathLike | None = None, **overrides) -> StreamingLM:
    """Load a model: the embedded default, a preset, a saved folder, or transformers folders.

    ``init="random"`` builds ``name_or_path`` (a preset name, or a folder's config) without weights.
    ``overrides`` set config fields (``threshold=0.5``, ``frames__grid=3``; see ``apply_overrides``).
    """
    if init not in ("pretrained", "random"):
        raise ConfigError(f"init={init!r} is unknown: use 'pretrained' or 'random'")
    if vision is not None or lm is not None:
        if vision is None or lm is None:
            raise ConfigError("loading from transformers folders needs both vision=DIR and lm=DIR")
        return load_from_transformers(vision, lm, weights, device=device, dtype=dtype, **overrides)
    if name_or_path == "mmlc-tiny" and not Path(name_or_path).exists():   # the embedded model by its name
        name_or_path = None
    if name_or_path is None:
        if init == "random":
            return build(apply_overrides(preset("tiny"), overrides), device=device, dtype=dtype)
        if not (DEFAULT_MODEL / WEIGHTS_FILE).exists():
            raise CheckpointError(
                f"the embedded default model mmlc-tiny is not in this installation ({DEFAULT_MODEL} has no "
                f"{WEIGHTS_FILE}): train it with `mmlc train --recipe tiny`, or load a preset with random "
                "weights: mmlc.load('tiny', init='random')")
        name_or_path = DEFAULT_MODEL
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        if init == "pretrained" and name_or_path == "tiny" and (DEFAULT_MODEL / WEIGHTS_FILE).exists():
            return load_folder(DEFAULT_MODEL, device=device, dtype=dtype, overrides=overrides)
        if init == "pretrained":
            raise CheckpointError(f"preset '{name_or_path}' has no pretrained weights shipped with mmlc: pass "
                                  "init='random' (--init random), or load real weights with vision=DIR, lm=DIR")
        return build(apply_overrides(preset(name_or_path), overrides), device=device, dtype=dtype)
    path = Path(name_or_path)
    if not path.exists():
        raise CheckpointError(f"model '{name_or_path}' is neither a preset ({', '.join(sorted(PRESETS))}), "
                              "'mmlc-tiny' (the embedded model) nor an existing folder: pass one of those or a "
                              "folder written by save_pretrained")
    if init == "random":
        config = apply_overrides(read_config(path), overrides)
        return build(config, load_tokenizer(path), device=device, dtype=dtype)
    return load_folder(path, device=device, dtype=dtype, overrides=overrides)


def read_config(path: Path) -> MmlcConfig:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"checkpoint folder '{path}' has no {CONFIG_FILE}: pass a folder written by "
                              "model.save_pretrained(DIR)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"'{file}' is not valid JSON ({err}): re-save the model") from err
    return MmlcConfig.from_dict(data)


def load_tokenizer(path: Path):
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"checkpoint folder '{path}' has no tokenizer.json: save the model with "
                              "model.save_pretrained(DIR), which writes the tokenizer beside the weights")
    return AutoTokenizer.from_pretrained(path)


def load_folder(path: Path, *, device=None, dtype=None, overrides: dict | None = None) -> StreamingLM:
    """A folder written by ``save_pretrained``: config.json + model.safetensors + tokenizer."""
    config = apply_overrides(read_config(path), overrides or {})
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint folder '{path}' has no {WEIGHTS_FILE}: copy the weights file beside "
                              "config.json (mmlc loads safetensors only)")
    model = build(config, load_tokenizer(path), device="cpu", dtype=torch.float32)
    load_weights(model, weights)
    dev = resolve_device(device)
    return model.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()


def load_weights(model: torch.nn.Module, file: Path, *, prefix: str = "", strict: bool = True,
                 allow_missing: tuple[str, ...] = ()) -> None:
    """Copy safetensors ``file`` into ``model``; missing, unexpected or mis-shaped tensors are errors
    (except missing tensors whose names start with one of ``allow_missing``: they keep their init)."""
    try:
        state = load_file(str(file))
    except Exception as err:  # safetensors raises several types for a broken file
        raise CheckpointError(f"weights file '{file}' cannot be read as safetensors ({err}): re-save it") from err
    own = model.state_dict()
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(f"weights file '{file}': tensor '{prefix}{key}' has shape {tuple(value.shape)} but "
                                  f"the model expects {tuple(own[key].shape)}: the config does not match these weights")
    groups = _shared_groups(model)
    missing = [k for k in own if not any(name in state for name in groups.get(k, [k]))
               and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        raise CheckpointError(f"weights file '{file}' does not fit the model: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                              f"{'...' if len(unexpected) > 5 else ''}")
    model.load_state_dict(state, strict=False)


def _shared_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Name -> all names sharing its storage (tied embeddings are saved once, under one name)."""
    by_ptr: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_ptr.setdefault(tensor.data_ptr(), []).append(name)
    return {name: names for names in by_ptr.values() for name in names}


def save_pretrained(model: StreamingLM, path: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors and the tokenizer to ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_model(model, str(tmp), metadata={"format": "pt", "mmlc": model.config.name})
    os.replace(tmp, path / WEIGHTS_FILE)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------- transformers folders
def load_from_transformers(vision_dir, lm_dir, weights=None, *, device=None, dtype=None, **overrides) -> StreamingLM:
    """Build from a transformers vision folder + a causal-LM folder (+ mmlc connector weights).

    The LM folder's tokenizer is used; template tokens it lacks are added as special tokens and the
    LM's embeddings grow to fit (new rows random). Without ``weights`` the connector is random (a
    warning says so). Only safetensors are read (``use_safetensors=True``).
    """
    vision_dir, lm_dir = Path(vision_dir), Path(lm_dir)
    for what, folder in (("vision", vision_dir), ("lm", lm_dir)):
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{what} folder '{folder}' has no config.json: pass a folder written by "
                                  "transformers' save_pretrained")
        if not any(folder.glob("*.safetensors")):
            raise CheckpointError(f"{what} folder '{folder}' has no .safetensors weights: mmlc loads safetensors "
                                  "only (convert with transformers: model.save_pretrained(DIR, safe_serialization=True))")
    vcfg = AutoConfig.from_pretrained(vision_dir)
    vcfg = getattr(vcfg, "vision_config", vcfg)
    vision_model = _load_vision(vision_dir, vcfg)
    lm_model = AutoModelForCausalLM.from_pretrained(lm_dir, use_safetensors=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    template = TemplateConfig()
    missing = [t for t in template.special_tokens() if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
        lm_model.resize_token_embeddings(len(tokenizer))
    mean, std = _preprocessor_stats(vision_dir)
    config = MmlcConfig(
        name=f"{vision_dir.name}+{lm_dir.name}",
        vision=VisionConfig(hf=vision_model.config.to_dict(), image_mean=mean, image_std=std),
        frames=FramesConfig(pooled=True, grid=3, temporal="none"),
        lm=LMConfig(hf=lm_model.config.to_dict()),
        template=template,
    )
    config = apply_overrides(config, overrides)
    model = StreamingLM(config, vision=vision_model, lm=lm_model)
    if weights is not None:
        file = Path(weights)
        file = file / WEIGHTS_FILE if file.is_dir() else file
        if not file.is_file():
            raise CheckpointError(f"connector weights '{weights}' not found: pass a .safetensors file or a folder "
                                  f"holding {WEIGHTS_FILE}")
        with safe_open(str(file), "pt") as f:
            keys = list(f.keys())
        prefix = "connector." if any(k.startswith("connector.") for k in keys) else ""
        load_weights(model.connector, file, prefix=prefix)
    else:
        warnings.warn("no connector weights given (weights=...): the connector is randomly initialised", stacklevel=2)
    attach_tokenizer(model, tokenizer)
    dev = resolve_device(device)
    return model.to(device=dev, dtype=resolve_dtype(dtype, dev)).eval()


def _load_vision(folder: Path, vcfg):
    model_type = vcfg.model_type
    if model_type.endswith("_vision_model"):
        return AutoModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
    from transformers import CLIPVisionModel, SiglipVisionModel
    classes = {"siglip_vision_model": SiglipVisionModel, "clip_vision_model": CLIPVisionModel}
    if model_type not in classes:
        raise CheckpointError(f"vision folder '{folder}' holds a '{model_type}' model: pass a SigLIP or CLIP vision "
                              "model (or a full SigLIP/CLIP model folder)")
    return classes[model_type].from_pretrained(folder, use_safetensors=True, dtype=torch.float32)


def _preprocessor_stats(folder: Path) -> tuple[tuple, tuple]:
    file = folder / "preprocessor_config.json"
    if file.is_file():
        data = json.loads(file.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
