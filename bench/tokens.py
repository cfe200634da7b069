"""Tokens per second of speech with Qwen's own vocabulary: what the runaway guard must allow.

The guard caps a segment at MAX_TOKENS_PER_SECOND new tokens per second of audio (plus TOKEN_MARGIN). Too low,
and fast speech in a script that costs many tokens is cut short; too high only lets a runaway run longer
before the repetition detector stops it. This measures, with the byte-level BPE that every Qwen2, Qwen2.5-Omni,
Qwen3 and Qwen3-ASR tokenizer shares (151,643 ranks, shipped as `qwen.tiktoken` in the `dashscope` wheel; no
model download), how many tokens a syllable of text costs in languages with dense scripts, and the tokens per
second of the real recordings in ../shared/audio from their reference transcripts.

    pip download --no-deps dashscope -d /tmp/ds && unzip -o /tmp/ds/dashscope-*.whl 'dashscope/resources/*' -d /tmp/ds
    python3 bench/tokens.py --ranks /tmp/ds/dashscope/resources/qwen.tiktoken --out bench/results
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import regex

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.backends import MAX_TOKENS_PER_SECOND, TOKEN_MARGIN  # noqa: E402
from bench.common import commit_label, git_state  # noqa: E402

AUDIO = ROOT.parent / "shared" / "audio"
# Qwen's pre-tokenizer (the same split in tokenizer.json of every Qwen2-vocabulary checkpoint).
PATTERN = regex.compile(
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Article 1 of the Universal Declaration of Human Rights: the same sentence in each language, in the form a
# transcript writes it (punctuation included), with a syllable count that the script makes countable.
SAMPLES = {
    "ko": "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다. 인간은 천부적으로 이성과 양심을 "
    "부여받았으며 서로 형제애의 정신으로 행동하여야 한다.",
    "vi": "Tất cả mọi người sinh ra đều được tự do và bình đẳng về nhân phẩm và quyền. Mọi con người đều được tạo "
    "hóa ban cho lý trí và lương tâm và cần phải đối xử với nhau trong tình bằng hữu.",
    "zh": "人人生而自由,在尊严和权利上一律平等。他们赋有理性和良心,并应以兄弟关系的精神相对待。",
    "ru": "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и совестью "
    "и должны поступать в отношении друг друга в духе братства.",
    "en": "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
    "conscience and should act towards one another in a spirit of brotherhood.",
}
# Syllables at a fast conversational pace: the quickest languages (Japanese, Spanish) average about 8 per
# second in read speech, and fast speakers go above that; 10 leaves a margin on the fastest.
FAST_SYLLABLES_PER_SECOND = 10.0


def load_ranks(path: Path) -> dict[bytes, int]:
    """qwen.tiktoken: one base64 token and its rank per line."""
    ranks = {}
    for line in path.read_text().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe(piece: bytes, ranks: dict[bytes, int]) -> int:
    """Tokens of one pre-tokenized piece: merge the adjacent pair of lowest rank until none is in the vocabulary."""
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while len(parts) > 1:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], math.inf))
        if parts[best] + parts[best + 1] not in ranks:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return len(parts)


def count_tokens(text: str, ranks: dict[bytes, int]) -> int:
    return sum(bpe(piece.encode(), ranks) for piece in PATTERN.findall(text))


def syllables(language: str, text: str) -> int:
    """Syllables where the script shows them: a Hangul block, a Vietnamese word, a Han character, a vowel."""
    if language == "ko":
        return sum(1 for c in text if 0xAC00 <= ord(c) <= 0xD7A3)
    if language == "vi":
        return len(regex.findall(r"\p{L}+", text))
    if language == "zh":
        return sum(1 for c in text if 0x4E00 <= ord(c) <= 0x9FFF)
    if language == "ru":
        return sum(1 for c in text.lower() if c in "аеёиоуыэюя")
    # English: groups of vowel letters, less a silent final e: close enough for a ratio.
    words = re.findall(r"[a-z]+", text.lower())
    return sum(max(1, len(re.findall(r"[aeiouy]+", w)) - (w.endswith("e") and len(w) > 2)) for w in words)


def speech_seconds(path: Path) -> float:
    """The recording's length less its leading and trailing silence (ffmpeg silenceremove at -40 dB)."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-af",
           "silenceremove=start_periods=1:start_threshold=-40dB,areverse,"
           "silenceremove=start_periods=1:start_threshold=-40dB,areverse",
           "-f", "s16le", "-ac", "1", "-ar", "16000", "-"]  # fmt: skip
    return len(subprocess.run(cmd, capture_output=True, check=True).stdout) / 2 / 16000


def recordings() -> list[tuple[str, str, Path]]:
    """(file, reference transcript, path) from the manifest's table."""
    out = []
    for line in (AUDIO / "MANIFEST.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 4 and (AUDIO / cells[0]).is_file():
            out.append((cells[0], cells[4], AUDIO / cells[0]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=Path, required=True, help="qwen.tiktoken from the dashscope wheel")
    parser.add_argument("--out", type=Path, default=None, help="directory for tokens.json and tokens.md")
    args = parser.parse_args()
    ranks = load_ranks(args.ranks)
    assert len(ranks) == 151643, "not Qwen's vocabulary"

    languages = []
    for language, text in SAMPLES.items():
        tokens, count = count_tokens(text, ranks), syllables(language, text)
        per = tokens / count
        languages.append({"language": language, "tokens": tokens, "syllables": count,
                          "tokens_per_syllable": round(per, 3),
                          "tokens_per_second_fast": round(per * FAST_SYLLABLES_PER_SECOND, 1)})  # fmt: skip
    measured = []
    for name, reference, path in recordings():
        seconds = speech_seconds(path)
        # The reference of LibriSpeech is upper case without punctuation; the model writes sentence case.
        text = reference.capitalize() if reference.isupper() else reference
        tokens = count_tokens(text, ranks)
        measured.append({"file": name, "speech_seconds": round(seconds, 2), "tokens": tokens,
                         "tokens_per_second": round(tokens / seconds, 2)})  # fmt: skip
    worst = max(row["tokens_per_second_fast"] for row in languages)
    report = {
        "git": git_state(),
        "guard": {"max_tokens_per_second": MAX_TOKENS_PER_SECOND, "token_margin": TOKEN_MARGIN},
        "fast_syllables_per_second": FAST_SYLLABLES_PER_SECOND,
        "languages": languages,
        "recordings": measured,
        "worst_fast_tokens_per_second": worst,
    }
    lines = [
        "# Tokens per second of speech (Qwen vocabulary)",
        "",
        f"Measured at {commit_label(report['git'])}; the guard there: {MAX_TOKENS_PER_SECOND} tokens per second of "
        f"audio + {TOKEN_MARGIN}.",
        "",
        f"UDHR article 1 per language, at a fast {FAST_SYLLABLES_PER_SECOND:g} syllables per second:",
        "",
        "| language | tokens | syllables | tokens per syllable | tokens per second, fast |",
        "|---|---|---|---|---|",
        *(
            f"| {r['language']} | {r['tokens']} | {r['syllables']} | {r['tokens_per_syllable']} | "
            f"{r['tokens_per_second_fast']} |"
            for r in languages
        ),
        "",
        "The recordings, from their reference transcripts over their speech (silence at the ends removed):",
        "",
        "| file | speech s | tokens | tokens per second |",
        "|---|---|---|---|",
        *(f"| {r['file']} | {r['speech_seconds']} | {r['tokens']} | {r['tokens_per_second']} |" for r in measured),
        "",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "tokens.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        (args.out / "tokens.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
