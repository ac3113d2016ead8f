"""Prose that no data renders carries no measurement: a number in a page's fixed text (outside its
``<!-- SCRIPT: begin (generated) -->`` ... ``<!-- SCRIPT: end -->`` markers, and outside rows copied from a
``pefs report``), or a comparison ("faster", "better", "hurts", "3x", "+2 points") next to a number, fails here
unless it is code, a version, a numbering, or one of the reviewed phrases in :data:`ALLOWED` (each with its reason).
Pages a script writes whole are checked through the script's own string literals: the text a render prints
whatever the data says must not state a comparison with a number."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
#: pages whose table rows are ``pefs report`` rows copied unchanged (tests/test_report_data.py checks the copy)
COPIED = {"benchmarks/scale_vs_shots.md": "scale_vs_shots/report.md"}

NUMBER = re.compile(r"(?<![\w.])[+-]?\d+(?:[.,]\d+)*(?:e-?\d+)?")
QUANTITY = re.compile(r"(?<![\w.])[+-]?\d+(?:\.\d+)?\s*(?:x|×)(?!\w)|[+-]\d+(?:\.\d+)?\s*points?\b")
DIRECTION = re.compile(r"\b(faster|slower|quicker|better|worse|hurts?|helps?|helped|loses? ground|gains? ground|ahead"
                       r"|behind|cheaper|dearer|costlier|outperforms?|beats?|improves?|speed-?ups?|slow-?downs?"
                       r"|highest|lowest|wins?)\b", re.IGNORECASE)
#: numbers that are never measurements, whatever the page: a package or Python version, an issue number, a date,
#: a heading's or list item's own number, a licence year
STRUCTURAL = [re.compile(p) for p in (
    r"\b(?:Python|torch|timm|peft|transformers|accelerate|pefs|Moved in)\s\d+(?:\.\d+)*\+?",
    r"\bissues?\s\d+", r"#\d+", r"(?:t-based |at )95%|95% (?:CIs?|confidence|t\b|intervals?)",
    r"ImageNet-1k|VTAB-1k|SHA-256|AVX-512|Apache-2\.0|ViT-[SB]/16|Lite[0-2](?:/1/2)?|3-D|1x1-conv|0\.\.C-1",
    r"\d{4}-\d\d-\d\d",
    r"\b(?:covers?|excludes?) 0\b", r"\(\w\+1\)", r"^\s*\d+\.\s", r"© \d{4}", r"^\|\s*0\.1\s*\|\s*0\.2\s*\|")]

#: (page, phrase, reason): the numbers inside ``phrase`` on ``page`` are reviewed as settings, counts fixed by the
#: run's design, or documented behaviour of the code; a phrase that no longer occurs fails
#: (:func:`test_every_allowed_phrase_still_occurs`), so the list cannot rot into a loose pass.
ALLOWED: list[tuple[str, str, str]] = [
    ("README.md", "Abnar & Zuidema, ACL 2020", "a citation's year, not a measurement"),
    ("README.md", "a 1,000-image\nsubset of Fashion-MNIST shipped inside pefs (10 classes; 60 train + 40 test images per class)",  # noqa: E501 (a phrase is quoted whole)
     "the embedded data set's size (pefs.data's embedded source)"),
    ("README.md", "about 6 GB", "download size of the optional extras, not a result"),
    ("README.md", "stratified 30% per class", "the validation hold-out fraction, a setting's default"),
    ('README.md', '1-shot episodes have nothing to hold out',
     'a setting: episodes validate on half the support'),
    ('README.md', 'default learning rate: 1e-3, except full fine-tuning at 1e-4\n(1e-3 diverged',
     'the defaults in Strategy.default_lr (test_readme_claims checks the values)'),
    ('README.md', 'the gain of 1e-4 on validation at 5 shots',
     "a setting named to point at selection.md's generated verdict, which the sentence defers to"),
    ('README.md', '8-bit RGB: 16-bit PNG/TIFF (microscopy, medical) and uint16 arrays are scaled by their full 0..65535 range',  # noqa: E501 (a phrase is quoted whole)
     "the decoder's documented input ranges (pefs/data/decode.py)"),
    ('README.md', '16-bit and 8-bit score the same',
     "bit depths (the decoder's ranges)"),
    ('README.md', '[0, 1] are scaled by 255 (other ranges, and integer images beyond 16 bits',
     "the decoder's documented input ranges"),
    ('README.md', '1-bit images are converted; the EXIF orientation is applied. An image over 89,478,485 pixels',
     "PIL's decompression-bomb limit, a constant of the decoder"),
    ('README.md', 'an evaluation batch of 16',
     "a setting's default"),
    ('README.md', '(at most 8;',
     'the decode-worker cap, a constant of runtime.hardware'),
    ('README.md', 'the training loss read every 16 steps',
     'a constant of runtime.engine'),
    ('README.md', '(default 512 MiB;',
     'the --cache-mb default'),
    ('README.md', 'heartbeat is over 10 minutes old',
     'the stale-claim age, a constant of the results store'),
    ('README.md', 'the exit status is 1',
     'a documented exit status'),
    ('README.md', '(atol 1e-4, rtol 1e-3)',
     "the ONNX export's check tolerances, constants of pefs.export"),
    ('README.md', 'ImageNet-1k, 224 px',
     "the model's native input size"),
    ('README.md', 'ImageNet-1k, 240 px',
     "the model's native input size"),
    ('README.md', 'ImageNet-1k, 260 px',
     "the model's native input size"),
    ('benchmarks/README.md', '× 1–16 shots × linear/LoRA × 3 seeds',
     'the grid of the page it lists (settings)'),
    ('benchmarks/README.md', '5-way 1/5-shot, 100 episodes',
     'the protocol of the page it lists (settings)'),
    ('benchmarks/README.md', 'every strategy at 1 and 5 shots',
     'the grid of the page it lists (settings)'),
    ('benchmarks/README.md', '(500 / 4,000 / 20,000 full Fashion-MNIST images)',
     'the sizes of the page it lists (settings)'),
    ('benchmarks/README.md', 'a 3 shots × 3 seeds',
     'the grid of the page it lists (settings)'),
    ('benchmarks/README.md', 'a 100,000-file folder',
     'the folder size of the page it lists (settings)'),
    ('benchmarks/episodic.md', '5-way 1-shot and 5-way 5-shot',
     'the protocols run (settings in episodic.json)'),
    ('benchmarks/episodic.md', '100 episodes per row drawn from the train split (60 images per class), 15 queries per class',  # noqa: E501 (a phrase is quoted whole)
     'settings recorded in episodic.json'),
    ('benchmarks/episodic.md', 'to **64 px** (not the suggested 128, to fit the time budget), episode seed 0, so every row sees the same 100\nepisodes. Mean ± 95% CI = t(99)·std/√100',  # noqa: E501 (a phrase is quoted whole)
     "settings recorded in episodic.json, and the interval's formula at that episode count"),
    ('benchmarks/episodic.md', 'the LoRA 5-shot row',
     'names a row'),
    ('benchmarks/episodic.md', 'batch 16, lr 1e-3 (the default of each strategy here), head lr 1e-2 × 0.1',
     "settings (each record's config)"),
    ('benchmarks/episodic.md', 'Training epochs: 30 for the main\nlinear-probe rows; to fit the budget, **10 epochs at 1 shot (10 steps of 5 images) and 3 epochs at 5 shots\n(6 steps)',  # noqa: E501 (a phrase is quoted whole)
     "settings (the table's epochs column renders them from the data)"),
    ('benchmarks/episodic.md', 'divided by 100.',
     'the episode count (a setting)'),
    ('benchmarks/episodic.md', "the linear probe's 5-shot rows; the linear probe's 1-shot rows",
     'names rows'),
    ('benchmarks/memory.md', 'at batch 16 through',
     'a setting (memory.json)'),
    ('benchmarks/memory.md', 'at 224 px (random weights',
     'a setting (memory.json)'),
    ('benchmarks/memory.md', 'at 128 px (the offline',
     'a setting (memory.json)'),
    ('benchmarks/memory.md', 'at batch 16 those',
     'a setting (memory.json)'),
    ('benchmarks/memory.md', '12 bytes per parameter',
     'arithmetic of AdamW in fp32 (gradient + two moments), not a measurement'),
    ('benchmarks/memory.md', 'the 0.5× target column',
     "the issue's target, a column of the table"),
    ('benchmarks/memory.md', 'shared the 2 cores',
     'the machine (memory.json records it)'),
    ('benchmarks/speed.md', 'on the last 2 blocks',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/speed.md', 'evaluation batch 16)',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/speed.md', 'the median of 3 episodes',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/speed.md', 'batch 16, pre-decoded',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/speed.md', '(median of 3)',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/speed.md', '100 episodes of one 5-way 5-shot protocol',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/speed.md', 'per 5-way 5-shot episode',
     'regenerated by the speed helper (settings)'),
    ('benchmarks/strategies.md', 'at 1 and 5 shots',
     "the grid (settings of the store's records)"),
    ('benchmarks/strategies.md', '3.37M backbone params',
     "the model's size (the table's params column)"),
    ('benchmarks/strategies.md', 'subset (10 classes, the same 400 test images every run), 128 px, head `code`, **10 epochs**, batch 16,',  # noqa: E501 (a phrase is quoted whole)
     "settings (the store's records)"),
    ('benchmarks/strategies.md', 'default learning rate (1e-3; full fine-tuning 1e-4',
     'the defaults in Strategy.default_lr'),
    ('benchmarks/strategies.md', 'seeds 0 and 1',
     "settings (the store's records)"),
    ('benchmarks/strategies.md', 'the 48 cells whose settings did not',
     "the store's history: cell counts (test_stored_keys checks the keys)"),
    ('benchmarks/strategies.md', 'the 4 `code` cells are new, at 1e-4',
     "the store's history: cell counts and the new default"),
    ('benchmarks/strategies.md', 'the shared 2-core CPU box',
     'the machine'),
    ('benchmarks/strategies.md', 'evaluation of 400 images',
     "the test split's size (a setting)"),
    ('benchmarks/strategies.md', 'Chance is 10%',
     '1 / the number of classes, a setting'),
    ('benchmarks/strategies.md', 'with 2 seeds, 10 epochs',
     "settings (the store's records)"),
    ('benchmarks/strategies.md', '10 seeds in',
     "selection.md's setting"),
    ('benchmarks/scale_vs_shots.md', 'linear probe vs LoRA, 1–16 shots',
     "the grid (settings of the store's records)"),
    ('benchmarks/scale_vs_shots.md', '3.37M / 4.14M / 4.81M backbone parameters) × strategies `code` (30 epochs on cached features)',  # noqa: E501 (a phrase is quoted whole)
     "model sizes (the table's params column) and a setting"),
    ('benchmarks/scale_vs_shots.md', '(defaults r=8, alpha=16 on every non-depthwise conv/linear in the blocks, **10 epochs**) × shots 1, 2, 4, 8,\n  16 × seeds 0, 1, 2 = 90 cells',  # noqa: E501 (a phrase is quoted whole)
     "settings of the store's records"),
    ('benchmarks/scale_vs_shots.md', 'batch 16, lr 1e-3 (LoRA), head lr 1e-3\n  (1e-2 × 0.1',
     "settings of the store's records"),
    ('benchmarks/scale_vs_shots.md', '(10 classes,',
     'a setting'),
    ('benchmarks/scale_vs_shots.md', '400 test images for every cell), 128 px. Chance is 10%.',
     'settings; chance = 1 / classes'),
    ('benchmarks/scale_vs_shots.md', 'LoRA runs 10 epochs instead of the default 30',
     'settings'),
    ('benchmarks/scale_vs_shots.md', 'the shared 2-core CPU build box (no GPU, torch 2.14.1, 2 threads)',
     'the machine'),
    ('benchmarks/scale_vs_shots.md', '(LoRA at 1 shot:',
     'names a cell of the tables'),
]
#: script literals (script, phrase, reason) that state a comparison next to a number on purpose
ALLOWED_LITERALS: list[tuple[str, str, str]] = [
    ("memory.py", "≤ 0.5×", "a column header: the issue's target ratio, each row's mark computed from its data"),
    ("selection.py", '"better"/"worse" means the whole 95% interval of the paired difference lies on that side of 0.',
     "defines the words the generated verdicts use; states no result"),
]


def fixed_prose(text: str, copied: set[str] = frozenset()) -> list[str]:
    """The lines of a page that no script renders: generated parts, fenced code and rows in ``copied`` blanked,
    inline code, link targets and HTML comments removed (line numbers kept)."""
    out, generated, code = [], False, False
    for line in text.splitlines():
        if re.match(r"<!-- \S+: begin \(generated\) -->", line):
            generated = True
        if generated or line.startswith("```") or code or line in copied:
            if re.match(r"<!-- \S+: end -->", line):
                generated = False
            if line.startswith("```"):
                code = not code
            out.append("")
            continue
        line = re.sub(r"`[^`]*`", "`code`", line)
        out.append(re.sub(r"\]\([^)]*\)|<!--.*?-->", "]", line))
    return out


def _strip(text: str, phrases: list[str]) -> str:
    """``text`` without the structural numbers and the allowed phrases (each replaced by a number-free mark)."""
    for phrase in phrases:
        text = text.replace(phrase, "«allowed»" + "\n" * phrase.count("\n"))
    for pattern in STRUCTURAL:
        text = re.sub(pattern.pattern, "«n»", text, flags=re.MULTILINE)
    return text


def findings(text: str, page: str, copied: set[str] = frozenset()) -> list[str]:
    """What the checker flags in page ``page`` (its name: README.md, episodic.md, ...) with contents ``text``:
    ``line N: "..."`` for every fixed-prose line holding an unreviewed number or a comparison with a number."""
    lines = fixed_prose(text, copied)
    joined = _strip("\n".join(lines), [phrase for p, phrase, _ in ALLOWED if p == page])
    out = []
    for n, line in enumerate(joined.split("\n"), 1):
        numbers = NUMBER.findall(line)
        if numbers:
            out.append(f"{page} line {n}: number(s) {numbers} in fixed prose: {lines[n - 1].strip()[:120]!r}")
        elif DIRECTION.search(line) and QUANTITY.search(lines[n - 1]):
            out.append(f"{page} line {n}: comparison with a quantity: {lines[n - 1].strip()[:120]!r}")
    return out


def literal_findings(source: str, script: str) -> list[str]:
    """Comparisons with a number (or any ``Nx`` / ``+N points``) in the string literals of benchmark ``script``: the
    text it prints whatever its data says (docstrings, ``help=`` and format specs are not page text)."""
    tree, skip = ast.parse(source), set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))
        part = (node.value if isinstance(node, ast.keyword) and node.arg == "help" else
                node.format_spec if isinstance(node, ast.FormattedValue) else None)
        if part is not None:
            skip.update(id(n) for n in ast.walk(part))
    allowed = [phrase for s, phrase, _ in ALLOWED_LITERALS if s == script]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = _strip(re.sub(r"`[^`]*`", "`code`", node.value), allowed)
            for sentence in re.split(r"(?<=[.;:])\s+", text):
                if QUANTITY.search(sentence) or DIRECTION.search(sentence) and NUMBER.search(sentence):
                    out.append(f"{script}:{node.lineno}: {sentence.strip()[:120]!r}")
    return out


def _pages() -> list[str]:
    """Every page, by its path in the repository: README.md, benchmarks/*.md and benchmarks/*/*.md."""
    pages = [ROOT / "README.md", *sorted(BENCH.glob("*.md")), *sorted(BENCH.glob("*/*.md"))]
    return [str(p.relative_to(ROOT)) for p in pages]


def _copied(page: str) -> set[str]:
    report = COPIED.get(page)
    return set((BENCH / report).read_text().splitlines()) if report else set()


def _written_whole(page: str) -> bool:
    """A page a script writes whole (its text is that script's literals) rather than between markers."""
    from tests.test_report_data import IN_PLACE_REPORTS

    return page.count("/") == 2 or page.startswith("benchmarks/") and Path(page).name in IN_PLACE_REPORTS


@pytest.mark.parametrize("page", [p for p in _pages() if not _written_whole(p)])
def test_fixed_prose_states_no_measurement(page):
    """A page's hand-written text holds no number that is not code, a version, a numbering or a reviewed phrase,
    and no comparison with a quantity: every measured figure and verdict is rendered from the page's data."""
    assert findings((ROOT / page).read_text(), page, _copied(page)) == []


def test_pages_written_whole_are_checked_through_their_scripts():
    """Every page outside the prose check is written whole by a script whose literals the next test checks."""
    from tests.test_report_data import IN_PLACE_REPORTS

    whole = {Path(p).name for p in _pages() if _written_whole(p) and p.count("/") == 1}
    assert whole == set(IN_PLACE_REPORTS)
    assert all((BENCH / script).exists() for script, _ in IN_PLACE_REPORTS.values())


#: what writes the pages: every benchmark script, and ``pefs report`` (benchmarks/*/report.md)
RENDERERS = sorted([*BENCH.glob("*.py"), *(ROOT / "pefs" / "results" / "report").glob("*.py")])


@pytest.mark.parametrize("script", [str(p.relative_to(ROOT)) for p in RENDERERS])
def test_render_literals_state_no_comparison(script):
    """A script that writes a page prints no comparison with a number whatever its data says: a verdict is
    computed from the data."""
    assert literal_findings((ROOT / script).read_text(), Path(script).name) == []


def test_every_allowed_phrase_still_occurs():
    """Every reviewed phrase is still in its page (a stale entry would silently widen the list)."""
    texts = {p: (ROOT / p).read_text() for p in _pages()}
    stale = [(page, phrase) for page, phrase, _ in ALLOWED if phrase not in "\n".join(fixed_prose(texts[page]))]
    assert stale == []
    strings = {s: "\n".join(n.value for n in ast.walk(ast.parse((BENCH / s).read_text()))
                             if isinstance(n, ast.Constant) and isinstance(n.value, str))
               for s, _, _ in ALLOWED_LITERALS}
    assert [(s, ph) for s, ph, _ in ALLOWED_LITERALS if ph not in strings[s]] == []


def test_checker_catches_a_changed_setting_in_fixed_prose():
    """The checker has teeth: "100 episodes" changed to "500 episodes" in episodic.md's fixed prose is flagged,
    while the committed page passes."""
    text = (BENCH / "episodic.md").read_text()
    assert "100 episodes per row" in text.split("<!-- episodic.py: begin")[0]
    assert findings(text, "benchmarks/episodic.md") == []
    mutated = text.replace("100 episodes per row", "500 episodes per row", 1)
    flagged = findings(mutated, "benchmarks/episodic.md")
    assert len(flagged) == 1 and "500" in flagged[0]


def test_checker_catches_a_comparison_and_ignores_generated_parts():
    """A comparison written by hand ("LoRA is 3x faster") is flagged; the same words inside a generated part or in
    code are not."""
    begin, end = "<!-- x.py: begin (generated) -->", "<!-- x.py: end -->"
    assert findings("LoRA is 3x faster here.\n", "x.md")
    assert findings(f"{begin}\nLoRA is 3x faster here.\n{end}\nRun `pefs tune --epochs 30`.\n", "x.md") == []
    assert literal_findings('s = "The ratios scatter both ways (0.5x to 1.5x)."\n', "x.py")
    assert literal_findings('s = f"{a:.1f} faster"\n', "x.py") == []
