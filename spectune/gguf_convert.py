"""GGUF files -> plain Hugging Face safetensors folders, converted once and cached.

A `.gguf` holds quantized weights that transformers dequantizes on every load (about 13 s for
SmolLM2-135M here). We do that once and keep the result under `$SPECTUNE_HOME/models/`, in a
folder keyed by the file's SHA-256 and the stored dtype. The folder is written under a temporary
name and renamed into place only when complete, so a conversion killed half-way never leaves a
folder that later loads; its leftovers are swept by the next conversion.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from .atomic import swap_into, write_json_atomic
from .errors import SpectuneError

SOURCE_FILE = "spectune-source.json"  # written last inside the temporary folder: marks a finished entry
GGUF_MAGIC = b"GGUF"


def spectune_home() -> Path:
    return Path(os.environ.get("SPECTUNE_HOME") or "~/.cache/spectune").expanduser()


def models_dir() -> Path:
    return spectune_home() / "models"


def read_gguf(path: Path):
    """Parse a GGUF header and tensor table, or raise a one-line error naming the file."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise SpectuneError(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')", where=str(path))
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        # The reader maps tensors lazily; a truncated file shows as tensors shorter than declared.
        size = path.stat().st_size
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
                raise ValueError(f"tensor {t.name} runs past the end of the file")
    except SpectuneError:
        raise
    except Exception as e:  # the gguf reader raises many kinds on a damaged file
        raise SpectuneError(f"corrupt or truncated GGUF file ({type(e).__name__}: {e})", where=str(path)) \
            from None
    arch = _field(reader, "general.architecture")
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise SpectuneError(f"GGUF architecture '{arch}' is not supported by transformers "
                            f"(supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})", where=str(path))
    return reader


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def gguf_params(reader) -> int:
    return int(sum(int(t.n_elements) for t in reader.tensors))


def file_sha256(path: Path, progress: bool = False) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime) so a multi-GB GGUF is hashed once."""
    st = path.stat()
    memo_path = spectune_home() / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    h = hashlib.sha256()
    from tqdm import tqdm

    with open(path, "rb") as fh, tqdm(total=st.st_size, unit="B", unit_scale=True, desc="hashing",
                                       disable=not progress, file=sys.stderr) as bar:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            bar.update(len(chunk))
    memo[key] = h.hexdigest()
    write_json_atomic(memo_path, memo)
    return memo[key]


def entry_dir(path: Path, sha: str, dtype: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem)[:80]
    return models_dir() / f"{stem}-{sha[:12]}-{dtype}"


def cached_entry(path: Path, dtype: str) -> Path | None:
    """The finished cache folder for this GGUF file and dtype, if there is one."""
    d = entry_dir(path, file_sha256(path), dtype)
    return d if (d / SOURCE_FILE).is_file() else None


def convert_gguf(path: Path, dtype: str = "fp32", force: bool = False, progress: bool = True) -> Path:
    """Convert `path` into the cache (once) and return the finished folder."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    reader = read_gguf(path)
    n_params = gguf_params(reader)
    del reader
    sha = file_sha256(path, progress=progress)
    final = entry_dir(path, sha, dtype)
    if (final / SOURCE_FILE).is_file() and not force:
        return final
    sweep_stale_tmp()
    tmp = models_dir() / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    t0 = time.time()
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    say(f"converting {path.name} ({n_params / 1e6:.1f}M parameters) to {dtype} safetensors in {final}")
    try:
        folder, name = str(path.parent), path.name
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        if progress:
            transformers.utils.logging.enable_progress_bar()
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
        # save_pretrained refuses a GGUF-loaded model (it carries a quantization config), so the
        # same weights go into a plain model built from the config without it. `assign` shares
        # the tensors instead of copying them: no second copy of the weights in memory.
        config = copy.deepcopy(gguf_model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        plain.load_state_dict(gguf_model.state_dict(), assign=True, strict=True)
        plain.tie_weights()
        plain.generation_config = gguf_model.generation_config
        say("writing safetensors")
        plain.save_pretrained(tmp, safe_serialization=True)
        info = {"source": str(path), "sha256": sha, "dtype": dtype, "params": n_params,
                "architecture": plain.config.architectures, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "transformers": transformers.__version__, "seconds": round(time.time() - t0, 1)}
        (tmp / SOURCE_FILE).write_text(json.dumps(info, indent=1))
        _commit(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        transformers.utils.logging.disable_progress_bar()
    say(f"done in {time.time() - t0:.1f} s")
    return final


def _commit(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; the rename is the only step a reader can observe."""
    try:  # with --force the old entry moves to .old-..., which a later sweep removes if we die
        swap_into(tmp, final, old=final.with_name(f".old-{final.name}-{os.getpid()}"))
    except OSError:
        # Another process finished the same conversion first: theirs is as good as ours.
        if not (final / SOURCE_FILE).is_file():
            raise


def sweep_stale_tmp() -> None:
    """Remove folders left by conversions whose process is gone (killed half-way)."""
    root = models_dir()
    if not root.is_dir():
        return
    for d in root.glob(".*-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and d.name.startswith((".tmp-", ".old-")) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cached_entries() -> list[tuple[Path, dict]]:
    """Every finished cache folder with its source record."""
    root = models_dir()
    out = []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        src = d / SOURCE_FILE
        if not d.name.startswith(".") and src.is_file():
            try:
                out.append((d, json.loads(src.read_text())))
            except ValueError:
                continue
    return out
