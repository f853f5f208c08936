"""Text tokenizer of the shipped VLA: a real ``tokenizers`` WordPiece tokenizer.

Vocabulary layout (ids in this order, fixed by construction so a checkpoint's
``tokenizer.json`` fully determines it):

    [PAD] [UNK] [BOS] [EON]          special tokens (EON ends the narration)
    whole words of the task language  e.g. "pick", "red", "cube", "lifting"
    single characters and ##chars     so any text tokenizes (no [UNK] for ASCII)
    <act_0> ... <act_255>             the action tokens, the LAST n_bins ids

Action tokens can never come out of ``encode`` (the pre-tokenizer splits "<",
"_" and ">" apart), so text and action positions stay disjoint.
``unknown_words`` lists words outside the task vocabulary so a policy can
reject an instruction it was never trained on with a clear message.
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

PAD, UNK, BOS, EON = "[PAD]", "[UNK]", "[BOS]", "[EON]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EON)
ACTION_TOKEN_FORMAT = "<act_{}>"

COLOURS = ("red", "green", "blue", "yellow")
OBJECTS = ("cube", "block", "ball", "object", "target")

#: Sentences of the task language: instructions, narration, the prompt template.
TASK_CORPUS: tuple[str, ...] = (
    "what action should the robot take to",
    *[f"move to the {c} {o}" for c in COLOURS for o in OBJECTS],
    *[f"reach the {c} {o}" for c in COLOURS for o in OBJECTS],
    *[f"push the {c} {o} to the target" for c in COLOURS for o in OBJECTS],
    *[f"pick up the {c} {o}" for c in COLOURS for o in OBJECTS],
    *[f"moving to the {c} {o}" for c in COLOURS for o in OBJECTS],
    *[f"pushing the {c} {o}" for c in COLOURS for o in OBJECTS],
    *[f"lifting the {c} {o}" for c in COLOURS for o in OBJECTS],
    *[f"grasping the {c} {o}" for c in COLOURS for o in OBJECTS],
    "closing the gripper", "opening the gripper", "lifting the cube", "pushing the block",
    "holding still", "done", "approaching", "aligning", "above", "behind", "left", "right",
    "lower", "lowering", "raise", "raising", "place", "placing", "grasp", "release", "releasing",
    "reached", "pushed", "lifted", "picked", "moved", "and", "then", "towards", "toward", "into",
    "onto", "on", "in", "at", "of", "it", "near", "goal", "table", "arm", "hand", "slowly", "stop",
    "go", "put", "down", "a", "an", "please", "now", "carefully",
)

_WORD_RE = re.compile(r"[a-z]+")
_CHARS = string.ascii_lowercase + string.digits + string.punctuation


def _corpus_words(corpus: tuple[str, ...] | list[str]) -> list[str]:
    words: set[str] = set()
    for line in corpus:
        words.update(_WORD_RE.findall(line.lower()))
    return sorted(words)


class VLATextTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` with the project's id layout.

    Attributes:
        vocab_size: total ids (text + specials + action tokens).
        eon_token_id, bos_token_id, pad_token_id, unk_token_id: special ids.
        n_action_tokens: how many trailing ids are action tokens.
        known_words: the task vocabulary (whole words the model was built on).
    """

    def __init__(self, tokenizer: Tokenizer, known_words: list[str], n_action_tokens: int = 256) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.pad_token_id = vocab[PAD]
        self.unk_token_id = vocab[UNK]
        self.bos_token_id = vocab[BOS]
        self.eon_token_id = vocab[EON]
        self.n_action_tokens = int(n_action_tokens)
        first = self.vocab_size - self.n_action_tokens
        for b in (0, self.n_action_tokens - 1):
            tok = ACTION_TOKEN_FORMAT.format(b)
            if vocab.get(tok) != first + b:
                raise ValueError(
                    f"action token {tok} must have id {first + b} (the last {self.n_action_tokens} ids), "
                    f"found {vocab.get(tok)}"
                )
        self.known_words = frozenset(known_words)

    # --- building ------------------------------------------------------
    @classmethod
    def build(cls, corpus: tuple[str, ...] | list[str] = TASK_CORPUS, n_action_tokens: int = 256) -> "VLATextTokenizer":
        """Deterministic vocabulary from ``corpus`` (same corpus -> same ids)."""
        words = _corpus_words(corpus)
        vocab: dict[str, int] = {}
        for tok in (*SPECIAL_TOKENS, *words, *_CHARS, *[f"##{c}" for c in _CHARS]):
            vocab.setdefault(tok, len(vocab))
        for b in range(n_action_tokens):
            vocab[ACTION_TOKEN_FORMAT.format(b)] = len(vocab)
        tok = Tokenizer(WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100))
        tok.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        return cls(tok, words, n_action_tokens)

    # --- persistence ---------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        """Write ``tokenizer.json`` (the tokenizer) and ``tokenizer_words.json`` (task vocabulary)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(out / "tokenizer.json"))
        meta = {"known_words": sorted(self.known_words), "n_action_tokens": self.n_action_tokens}
        (out / "tokenizer_words.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, ckpt_dir: str | Path) -> "VLATextTokenizer":
        """Read a tokenizer saved by ``save``; raises ValueError naming the file on failure."""
        d = Path(ckpt_dir)
        path = d / "tokenizer.json"
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ValueError(f"{path}: cannot load tokenizer ({exc})") from exc
        words_path = d / "tokenizer_words.json"
        n_action = 256
        if words_path.exists():
            try:
                meta = json.loads(words_path.read_text())
                words = list(meta["known_words"])
                n_action = int(meta.get("n_action_tokens", 256))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{words_path}: malformed ({exc})") from exc
        else:  # fall back to whole words in the vocabulary
            words = [w for w in tok.get_vocab() if len(w) > 1 and w.isalpha()]
        try:
            return cls(tok, words, n_action)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    # --- TextTokenizer protocol -----------------------------------------
    @property
    def action_token_begin(self) -> int:
        return self.vocab_size - self.n_action_tokens

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special and action tokens are dropped."""
        keep = [i for i in ids if self.eon_token_id < i < self.action_token_begin]
        return self.tokenizer.decode(keep, skip_special_tokens=True)

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` (lower-cased, letters only) outside the task vocabulary, in order."""
        seen: list[str] = []
        for w in _WORD_RE.findall(text.lower()):
            if w not in self.known_words and w not in seen:
                seen.append(w)
        return seen

    def text_token_ids(self) -> list[int]:
        """Ids a narration position may emit (words, characters; EON excluded)."""
        return list(range(self.eon_token_id + 1, self.action_token_begin))
