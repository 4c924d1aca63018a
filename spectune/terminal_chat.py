"""`spectune chat`: an interactive, streaming chat in the terminal, with the decoding figures
(tokens/s, and with a drafter its acceptance and tau) after each answer."""

from __future__ import annotations

import sys

from .config import ChatConfig
from .generate import Generator

HELP = "type a message; /reset forgets the conversation, /exit (or Ctrl-D) leaves"


def chat(cfg: ChatConfig, stdin=None, stdout=None) -> int:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    gen = Generator(cfg.model, dtype=cfg.dtype, draft=cfg.draft, quantize=cfg.quantize, compile=cfg.compile)
    options = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
               "top_p": cfg.top_p, "repetition_penalty": cfg.repetition_penalty, "seed": cfg.seed}
    gen.settings(**options)  # bad settings are refused before the first message
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    history: list[dict] = []
    interactive = stdin.isatty()
    print(f"spectune chat with {cfg.model}" + (f", draft {cfg.draft}" if cfg.draft else "") + f" ({HELP})",
          file=sys.stderr)
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = []
            print("(conversation forgotten)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        try:
            pieces = gen.stream(system + history, **options)
            for piece in pieces:
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the session
            pieces.close()
        stdout.write("\n")
        r = gen.last
        history.append({"role": "assistant", "content": r.text})
        rate = r.new_tokens / r.seconds if r.seconds else 0.0
        spec = ""
        if r.speculative:
            spec = f", acceptance {r.speculative['acceptance']:.0%}, tau {r.speculative['tau']:.2f}"
        print(f"[{r.new_tokens} tokens, {rate:.1f} tokens/s{spec}]", file=sys.stderr)
