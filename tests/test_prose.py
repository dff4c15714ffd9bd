"""The hand-written prose says what the profiles and the published run say (`writeup.prose`), and a false sentence
put anywhere in it fails the suite, naming the file and the sentence."""
from __future__ import annotations

import json
import shutil

import nbformat
import pytest

from bagnet_lib.writeup import prose
from tests.conftest import ROOT


def test_the_repositorys_prose_says_only_what_the_profiles_and_the_published_run_say():
    findings = prose.check_repository(ROOT)
    assert not findings, "false sentences in the hand-written prose:\n" + "\n".join(map(str, findings))


@pytest.fixture
def repo_copy(tmp_path):
    """The prose files and the published numbers of the repository, copied: each test plants its own lie."""
    for name in ("README.md", "docs", "notebooks", "results"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


FALSE = {  # sentence → the claim the checker must name
    "The `cpu` profile trains ResNet-50 for 30 epochs.": "epochs '30 epochs'",
    "The course evaluates BagNet-33 at 192 px.": "image size 'at 192 px'",
    "BagNet-33 then sees a 20×20 patch grid.": "patch grid '20×20 patch grid'",
    "Its last layer has 1,024 feature channels.": "channel count '1,024 feature channels'",
    "BagNets train on 96 px crops of 30–70 % of the image.": "training crop '96 px crops'",
}
MEASURED = "With 25 % of the patches dropped BagNet-33 reaches {} on the test split."


@pytest.mark.parametrize("where", ["notebooks/02_train_resnet50.ipynb", "README.md", "docs/data.md"])
def test_a_false_sentence_anywhere_fails_naming_the_file_and_the_sentence(repo_copy, where):
    path = repo_copy / where
    known = prose.known_numbers(repo_copy)
    unknown = next(f"0.{i:03d}" for i in range(700, 1000) if f"0.{i:03d}" not in known)  # a number no file holds
    lies = " ".join([*FALSE, MEASURED.format(unknown)])
    if path.suffix == ".ipynb":
        nb = nbformat.read(path, as_version=4)
        nb.cells.insert(3, nbformat.v4.new_markdown_cell(f"## A new section\n\nSome context. {lies}"))
        nbformat.write(nb, path)
    else:
        path.write_text(path.read_text() + f"\n\nSome context. {lies}\n")
    findings = [f for f in prose.check_repository(repo_copy) if f.path == where]
    for sentence, stated in FALSE.items():
        assert any(sentence in f.sentence and f.stated.startswith(stated) for f in findings), (sentence, findings)
    assert any(MEASURED.format(unknown) in f.sentence and f.stated == f"the number {unknown!r}" for f in findings)
    assert any(f.stated == "crop scale '30–70 %'" for f in findings)
    assert len(findings) == len(FALSE) + 2  # and nothing else of the file


@pytest.mark.parametrize("sentence", [
    "The `cpu` profile trains ResNet-50 45 / BagNet-33 40 epochs, then 2 epochs of the head.",
    "The `smoke` profile trains for 1 epoch at width 0.125.",
    "The published BagNet-33 has 2,048 feature channels at 224 px, a 24×24 patch grid.",
    "torchvision's default crop scale is 8–100 %, and the crops here are smaller.",
    "The paper trained with lr 0.001 and batch 32 for 50 epochs.",
])
def test_true_sentences_pass(sentence):
    assert prose.check_sentence(sentence, set()) == []


@pytest.mark.parametrize("sentence, stated", [
    ("The `cpu` profile trains ResNet-50 40 / BagNet-33 45 epochs.", "epochs"),  # each number to its network
    ("The `smoke` profile trains for 45 epochs.", "epochs"),  # the named profile, not the course's
    ("The `cpu` networks have 2,048 feature channels.", "channel count"),  # the published count, said of `cpu`
    ("ResNet-50 trains on 144 px crops.", "training crop"),  # BagNet-33's crop, said of ResNet-50
])
def test_false_sentences_are_caught_with_what_is_true(sentence, stated):
    found = prose.check_sentence(sentence, set())
    assert len(found) == 1 and found[0][0].startswith(stated)
    assert "`" in found[0][1]  # the truth names the profile it was read from


def test_the_previous_round_may_be_cited_as_the_changes_page_records_it(repo_copy):
    known = prose.known_numbers(repo_copy)
    earlier = next(f"0.{i:03d}" for i in range(700, 1000) if f"0.{i:03d}" not in known)  # a number no file holds
    sentence = MEASURED.format(earlier)
    assert prose.check_sentence(sentence, known)  # not citable until a published page records it
    page = repo_copy / "results" / "cpu" / "changes.md"
    page.write_text(f"| BagNet-33 | 0 | {earlier} | 0.758 | -0.001 |\n")
    assert prose.check_sentence(sentence, prose.known_numbers(repo_copy)) == []


def test_the_tuning_history_may_cite_recorded_runs_but_nothing_else(repo_copy):
    record = json.loads((repo_copy / "results" / "tuning" / "cpu.json").read_text())
    history = prose.tuning_record(repo_copy)
    assert (35, 100) in history["crop scale"] and (16, 16) in history["patch grid"]  # 160 px runs, from the record
    assert len(record["runs"]) > 0
    text = ("# Profiles\n\n## How the `cpu` profile was tuned\n\nA 160 px run trained on 128 px crops of 35–100 %.\n\n"
            "Another trained on 100 px crops.\n\n## Today\n\nThe `cpu` profile tests at 160 px.\n")
    found = []
    for is_history, part in prose.sections(text):
        for s in prose.sentences(part):
            found += [(s, stated) for stated, _ in prose.check_sentence(s, set(), history if is_history else None)]
    assert found == [("Another trained on 100 px crops.", "training crop '100 px crops'"),
                     ("The `cpu` profile tests at 160 px.", "image size 'at 160 px'")]
