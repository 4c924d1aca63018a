"""From a row's token ids to the text it streams: incremental detokenization and stop strings."""

from __future__ import annotations


class TextStream:
    """Feed a row's new tokens, get the text that is safe to show. Held back: a character split
    across tokens (byte-level BPE), and any tail that could be the start of a stop string. Once a
    stop string appears, `stopped` is set and the text ends just before it."""

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop or [] if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1  # characters that may begin a stop string
        self.ids: list[int] = []
        self.text = ""  # the text so far (ends before a stop string once one is seen)
        self.sent = 0  # characters of `text` already handed out
        self.stopped = False

    def feed(self, tokens: list[int]) -> str:
        if self.stopped:
            return ""
        self.ids += tokens
        full = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if full.endswith("\ufffd"):
            return ""  # a character split across tokens: wait for its last byte
        self.text = full
        if self.stop:
            # Only text from the held-back tail onwards can hold a stop string not yet seen.
            start = max(0, self.sent - self.hold)
            hits = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
            if hits:
                self.text, self.stopped = full[: min(hits)], True
                return self._release(len(self.text))
        return self._release(len(full) - self.hold)

    def follow(self, request, tokens: list[int]) -> str:
        """The text for an engine row's new tokens. A stop string ends the row (the engine drops a
        cancelled row at its next step); the row's end releases whatever was held back."""
        piece = self.feed(tokens)
        if self.stopped:
            request.cancelled, request.finish_reason = True, "stop"
        if request.finish_reason is not None:
            piece += self.finish()
        return piece

    def finish(self) -> str:
        """Whatever was held back, once the row has ended."""
        if not self.stopped:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:upto], upto
        return piece
