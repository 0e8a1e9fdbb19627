"""`fernb.data.load_splits`, the one entry point of the notebooks (issue 8, item 8): one data_root convention, the
official splits where they exist, and a seeded subject-independent split where they do not."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from test_readers import (AFFECTNET_HEADER, make_rafdb, pixels, save_img, write_fer2013)

from fernb.data import decode as D
from fernb.data import has_clean_labels, load_splits, readers
from fernb.data import synthfer as S
from fernb.data.readers import DatasetLayoutError, DatasetNotFoundError
from fernb.data.splits import with_label_noise

EXPRESSIONS = ("AF", "AN", "DI", "HA", "NE", "SA", "SU")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FERNB_DATA", raising=False)


def make_kdef_subjects(root, n_per_gender=10):
    """20 subjects (AF01..AF10, AM01..AM10), 7 expressions, straight and half-left, each subject its own grey."""
    for g in "FM":
        for i in range(1, n_per_gender + 1):
            subject = f"A{g}{i:02d}"
            for e in EXPRESSIONS:
                for angle in ("S", "HL"):
                    save_img(root / subject / f"{subject}{e}{angle}.JPG", 5 * i + (100 if g == "M" else 0),
                             size=(24, 32))
    return root


def make_ckplus_subjects(root, n_subjects=15):
    for s in range(1, n_subjects + 1):
        subject = f"S{s:03d}"
        for q, code in ((1, 1 + s % 7), (2, 1 + (s + 3) % 7)):
            seq = f"{q:03d}"
            for k in range(1, 5):
                save_img(root / "cohn-kanade-images" / subject / seq / f"{subject}_{seq}_{k:08d}.png", 10 * k,
                         size=(32, 24), mode="L")
            emo = root / "Emotion" / subject / seq
            emo.mkdir(parents=True, exist_ok=True)
            (emo / f"{subject}_{seq}_{4:08d}_emotion.txt").write_text(f"   {code:.7e}\n")
    return root


def make_sfew_movies(root, n_movies=20):
    classes = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
    for m in range(n_movies):
        for k in range(4):
            cls = classes[(m + k) % 7]
            save_img(root / "Train" / "Train_Aligned_Faces" / cls / f"Movie{m:02d}_{k:03d}{m:06d}.png", 10 + m)
    for k in range(7):
        save_img(root / "Val" / "Val_Aligned_Faces" / classes[k] / f"Other_{k:09d}.png", 200)
    return root


def identities_of(ds):
    return set(ds.identities.tolist())


# ---- no official split: KDEF, CK+ -----------------------------------------------------------------------------------
def test_kdef_split_is_subject_independent_seeded_and_stated(tmp_path):
    root = make_kdef_subjects(tmp_path / "KDEF")
    with pytest.raises(ValueError, match="split"):            # what notebook 00 asked for before: rejected
        readers.load("kdef", root, split="train")
    train, val, test = load_splits("kdef", root, size=48, channels=1, seed=0)
    assert len(train) + len(val) + len(test) == 20 * 14
    assert not (identities_of(train) & identities_of(val) or identities_of(train) & identities_of(test)
                or identities_of(val) & identities_of(test))
    assert len(identities_of(test)) == 4 and len(identities_of(val)) == 2        # 20 %, 10 % of 20 subjects
    for ds, split in ((train, "train"), (val, "val"), (test, "test")):
        assert ds.name == f"kdef-{split}" and ds.info["split"] == split
        assert "subject-independent" in ds.info["split_rule"] and "seed 0" in ds.info["split_rule"]
    again = load_splits("kdef", root, size=48, channels=1, seed=0)
    assert torch.equal(again.test.images, test.images) and torch.equal(again.val.labels, val.labels)
    other = load_splits("kdef", root, size=48, channels=1, seed=1)
    assert identities_of(other.test) != identities_of(test)
    assert test.class_counts().tolist() == [8] * 7                 # every subject has every expression


def test_ckplus_split_keeps_each_subject_on_one_side(tmp_path):
    root = make_ckplus_subjects(tmp_path / "CK+")
    train, val, test = load_splits("ckplus", root, size=48, channels=1, seed=3, num_classes=7)
    groups = [identities_of(d) for d in (train, val, test)]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(map(len, groups)) == 15 and all(groups)
    assert train.num_classes == 7


# ---- official splits ------------------------------------------------------------------------------------------------
def test_rafdb_val_is_carved_from_train_and_test_is_official(tmp_path):
    codes = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(1, 141)}
    codes.update({f"test_{i:04d}.jpg": 1 + i % 7 for i in range(1, 36)})
    root = make_rafdb(tmp_path / "RAF-DB", codes)
    train, val, test = load_splits("rafdb", root, size=48, seed=0, val_fraction=0.1)
    assert (len(train), len(val), len(test)) == (126, 14, 35)
    assert val.class_counts().tolist() == [2] * 7                  # stratified
    assert test.info["official_split"] == "test" and val.info["official_split"] == "train"
    assert "stratified 10% of the official train" in val.info["split_rule"]
    capped = load_splits("rafdb", root, size=48, seed=0, n_train=35, n_val=7, n_test=14)
    assert (len(capped.train), len(capped.val), len(capped.test)) == (35, 7, 14)
    assert capped.train.class_counts().tolist() == [5] * 7 and capped.train.info["n_available"] == 126


def test_caps_apply_before_decoding(tmp_path, monkeypatch):
    codes = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(1, 141)}
    codes.update({f"test_{i:04d}.jpg": 1 + i % 7 for i in range(1, 36)})
    root = make_rafdb(tmp_path / "RAF-DB", codes)
    real, calls = D.load_image, []
    monkeypatch.setattr(D, "load_image", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    load_splits("rafdb", root, size=48, seed=0, n_train=21, n_val=7, n_test=7)
    assert len(calls) == 35                                        # not 175


def test_fer2013_and_ferplus_use_the_official_usage(tmp_path):
    root = tmp_path / "FER2013"
    rows = [(i % 7, pixels(i), usage) for i, usage in enumerate(["Training"] * 14 + ["PublicTest"] * 7
                                                                 + ["PrivateTest"] * 7)]
    write_fer2013(root / "fer2013.csv", rows)
    train, val, test = load_splits("fer2013", root, size=48, channels=1)
    assert (len(train), len(val), len(test)) == (14, 7, 7)
    assert [d.info["official_split"] for d in (train, val, test)] == ["train", "val", "test"]
    assert "PublicTest" in val.info["split_rule"]


def test_affectnet_test_is_the_validation_list(tmp_path):
    from PIL import Image

    root = tmp_path / "AffectNet"
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    for fname, n in (("training.csv", 70), ("validation.csv", 14)):
        with open(lists / fname, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(AFFECTNET_HEADER)
            for i in range(n):
                rel = f"{i % 5}/{fname[:3]}{i:03d}.png"
                (root / "Manually_Annotated_Images" / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (30, 30), (i, i, i)).save(root / "Manually_Annotated_Images" / rel)
                w.writerow([rel, 2, 2, 20, 20, "", i % 7, 0.0, 0.0])
    train, val, test = load_splits("affectnet", root, size=48, seed=0)
    assert (len(train), len(val), len(test)) == (63, 7, 14)
    assert test.info["file_list"].endswith("validation.csv") and "validation.csv" in test.info["split_rule"]


def test_sfew_test_is_val_and_val_takes_whole_movies(tmp_path):
    root = make_sfew_movies(tmp_path / "SFEW2")
    train, val, test = load_splits("sfew", root, size=48, seed=0)
    assert len(test) == 7 and test.info["official_split"] == "val"
    movies = [set(np.asarray(d.info["movies"])[d.meta["movie"].numpy()]) for d in (train, val)]
    assert movies[1] and not movies[0] & movies[1]
    assert len(train) + len(val) == 80


# ---- the convention -------------------------------------------------------------------------------------------------
def test_data_root_is_the_dataset_folder_and_FERNB_DATA_its_parent(tmp_path, monkeypatch):
    make_rafdb(tmp_path / "data" / "RAF-DB")
    with pytest.raises(DatasetLayoutError, match=r"but .*data/RAF-DB does: pass"):
        load_splits("rafdb", tmp_path / "data", size=48)              # the parent, passed as data_root
    with pytest.raises(DatasetNotFoundError, match="FERNB_DATA is not set"):
        load_splits("rafdb", None, size=48)
    monkeypatch.setenv("FERNB_DATA", str(tmp_path / "data"))
    via_env = load_splits("rafdb", None, size=48, val_fraction=0.34)
    direct = load_splits("rafdb", tmp_path / "data" / "RAF-DB", size=48, val_fraction=0.34)
    assert torch.equal(via_env.train.images, direct.train.images)
    assert via_env.test.info["root"] == str(tmp_path / "data" / "RAF-DB")


# ---- SynthFER, and whether clean labels exist ------------------------------------------------------------------------
def test_synthfer_goes_through_the_same_entry_point(tmp_path):
    train, val, test = load_splits("synthfer", size=48, channels=1, seed=2, n_train=40, n_val=20, n_test=20)
    ref = S.synthfer("train", 40, size=48, channels=1, seed=2)
    assert torch.equal(train.images, ref.images) and torch.equal(train.labels, ref.labels)
    assert (len(val), len(test)) == (20, 20) and test.info["split"] == "test"
    assert "disjoint identity ranges" in train.info["split_rule"]
    assert not identities_of(train) & identities_of(test)
    with pytest.raises(ValueError, match="data_root must be None"):
        load_splits("synthfer", tmp_path, size=48)


def test_has_clean_labels(tmp_path):
    synth = S.synthfer("val", 30, size=48, seed=0, cache=False)
    assert has_clean_labels(synth) and has_clean_labels(with_label_noise(synth, 0.3))
    real = load_splits("kdef", make_kdef_subjects(tmp_path / "KDEF"), size=48).train
    assert real.clean_labels is None and not has_clean_labels(real)
    noisy = with_label_noise(real, 0.3)
    assert noisy.clean_labels is not None and not has_clean_labels(noisy)   # the annotators' labels, not truth


def test_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        load_splits("kdef", tmp_path, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(TypeError, match="split="):
        load_splits("kdef", tmp_path, split="train")
    root = make_kdef_subjects(tmp_path / "KDEF", n_per_gender=2)
    with pytest.raises(ValueError, match="at least 5 subjects"):
        load_splits("kdef", root, size=48)


def test_package_import_stays_light_and_exports_lazily():
    """`fernb.data` imports `sources` (scikit-learn, and PIL through the readers) only when one of its names is
    used: importing the package, its labels or SynthFER loads neither."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "import fernb.data, fernb.data.labels, fernb.data.synthfer\n"
            "heavy = [m for m in ('sklearn', 'PIL', 'fernb.data.sources', 'fernb.data.readers') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from fernb.data import load_splits, sources\n"
            "assert load_splits is sources.load_splits and 'sklearn' in sys.modules\n"
            "assert fernb.data.SPLIT_RULES is sources.SPLIT_RULES and fernb.data.DATASETS[0] == 'synthfer'\n"
            "assert not hasattr(fernb.data, 'no_such_name')\n"
            "ns = {}\n"
            "exec('from fernb.data import *', ns)\n"
            "assert {'load_splits', 'has_clean_labels', 'Splits', 'FERDataset'} <= set(ns)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
