"""spectune: fine-tune a pretrained transformer for your task, then decode and serve it fast.

The Python API mirrors the CLI:

    import spectune
    ref = spectune.resolve_model("smollm2-135m")          # alias, folder, .gguf or hub id
    print(spectune.generate("The capital of France is"))   # one shot
    gen = spectune.Generator("smollm2-135m")               # loaded once, many prompts
    for piece in gen.stream("Tell me a joke", temperature=0.7, seed=1):
        print(piece, end="", flush=True)
"""

__version__ = "0.1.0"

from .catalog import list_models
from .config import GenerateConfig, ListConfig, PrepareConfig
from .errors import SpectuneError
from .generate import GenerationResult, Generator, generate
from .loading import load_model, load_tokenizer
from .models import ALIASES, ModelRef, resolve_model

__all__ = [
    "ALIASES",
    "GenerateConfig",
    "GenerationResult",
    "Generator",
    "ListConfig",
    "ModelRef",
    "PrepareConfig",
    "SpectuneError",
    "__version__",
    "generate",
    "list_models",
    "load_model",
    "load_tokenizer",
    "resolve_model",
]
