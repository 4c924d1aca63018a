"""Rebuild the tiny tokenizers committed beside this file (run once; the output is committed).

tiny-bpe: byte-level BPE (like SmolLM2's), 384 entries, ChatML special tokens and chat template.
tiny-wordpiece: lowercased WordPiece (like MiniLM's), 256 entries, BERT special tokens.
Both are trained on the short text below, so any text still encodes (bytes / [UNK]).
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

HERE = Path(__file__).parent
TEXT = """The capital of France is Paris. The quick brown fox jumps over the lazy dog.
A model reads the text, predicts the next token, and a draft proposes several tokens at once.
Fine-tuning adapts a pretrained transformer to a task: named entities, sentiment, or dialogue.
Hello! How can I help you today? I would like to reset my password, please.
Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] " ' - are here too.
""" * 20
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def bpe() -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    fast.save_pretrained(HERE / "tiny-bpe")


def wordpiece() -> None:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(TEXT.splitlines(), trainers.WordPieceTrainer(vocab_size=256, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(HERE / "tiny-wordpiece")


if __name__ == "__main__":
    bpe()
    wordpiece()
