"""Real-dataset readers, each against a tiny fixture written in the dataset's official layout."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from fernb.data import decode as D
from fernb.data import labels as L
from fernb.data import readers as R
from fernb.data.dataset import FERDataset
from fernb.data.readers import (CorruptImageError, DatasetLayoutError, DatasetNotFoundError, UnknownLabelError,
                                load, load_affectnet, load_ckplus, load_fer2013, load_ferplus, load_kdef,
                                load_rafdb, load_sfew)

C = {name: i for i, name in enumerate(L.CLASSES_8)}      # canonical index by name


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Decoded-image caches go to this test's own folder, never to data/cache."""
    monkeypatch.setenv("FERNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FERNB_DATA", raising=False)


# ---- fixture writers ----------------------------------------------------------------------------------------------
def save_img(path, value, size=(24, 24), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * 3 if mode == "RGB" else value).save(path)
    return path


def truncate(path):
    """Overwrite `path` with a noisy JPEG cut in half (a truncated download)."""
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


RAF = {"train_00001.jpg": 5, "train_00002.jpg": 1, "train_00003.jpg": 7, "test_0001.jpg": 4, "test_0002.jpg": 2}


def make_rafdb(root, codes=RAF):
    lines = []
    for name, code in codes.items():
        save_img(root / "Image" / "aligned" / f"{name[:-4]}_aligned.jpg", code * 30)
        save_img(root / "Image" / "original" / name, code * 30, size=(40, 30))
        lines.append(f"{name} {code}")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def pixels(value, n=2304):
    return " ".join([str(value)] * n)


def write_fer2013(path, rows):
    """rows: (emotion, pixel string, Usage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    return path


FER_ROWS = [(0, pixels(10), "Training"), (3, pixels(20), "Training"), (6, pixels(30), "PublicTest"),
            (4, pixels(40), "PrivateTest"), (5, pixels(50), "PrivateTest")]

# FERPlus votes, in the csv's column order: neutral happiness surprise sadness anger disgust fear contempt unknown NF
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),   # happiness
    ("Training", "fer0000001.png", [0, 0, 6, 0, 0, 0, 4, 0, 0, 0]),    # surprise (fear 4)
    ("Training", "fer0000002.png", [0, 0, 0, 4, 0, 0, 0, 0, 6, 0]),    # unknown wins -> excluded
    ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),                 # no image name -> excluded
    ("Training", "fer0000004.png", [0, 0, 0, 5, 5, 0, 0, 0, 0, 0]),    # sadness/anger tie
    ("PublicTest", "fer0000005.png", [0, 9, 0, 0, 0, 0, 0, 1, 0, 0]),  # happiness, 1 contempt vote
]


def make_ferplus(root, rows=FERPLUS_ROWS, fer_csv=True):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(R.FERPLUS_HEADER)
        for usage, name, votes in rows:
            w.writerow([usage, name, *votes])
    if fer_csv:
        write_fer2013(root / "fer2013.csv", [(0, pixels(10 * (i + 1)), usage) for i, (usage, _, _) in enumerate(rows)])
    return root


AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]


def make_affectnet(root, train_codes=(1, 8, 7, 10, 9, 0), val_codes=(3,), val_header=True):
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    for fname, codes in (("training.csv", train_codes), ("validation.csv", val_codes)):
        with open(lists / fname, "w", newline="") as f:
            w = csv.writer(f)
            if fname == "training.csv" or val_header:
                w.writerow(AFFECTNET_HEADER)
            for i, code in enumerate(codes):
                rel = f"{i % 3}/{fname[:3]}{i:03d}.png"
                img = np.zeros((30, 40, 3), np.uint8)
                img[5:21, 10:26] = 255                      # the face box (x 10, y 5, 16 x 16) is white
                path = root / "Manually_Annotated_Images" / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(path)
                w.writerow([rel, 10, 5, 16, 16, "1.0;2.0;3.0;4.0", code, 0.25 * i, -0.5])
    return root


KDEF_FILES = {"AF01/AF01AFS.JPG": 4, "AF01/AF01HAFL.JPG": 1, "AM02/AM02NEHR.JPG": 0, "BF01/BF01SAS.JPG": 2,
              "BF01/BF01SUHL.JPG": 3}


def make_kdef(root, files=KDEF_FILES):
    for rel in files:
        save_img(root / rel, 100, size=(30, 40))
    return root


def make_sfew(root):
    save_img(root / "Train" / "Angry" / "a.png", 10)
    save_img(root / "Train" / "Happy" / "b.jpg", 20)
    save_img(root / "Train" / "Happy" / "c.png", 30)
    (root / "Train" / "Happy" / "notes.txt").write_text("not an image")
    save_img(root / "Val" / "Sad" / "d.png", 40)
    return root


def make_ckplus(root):
    def sequence(subject, seq, n_frames, code):
        for k in range(1, n_frames + 1):
            save_img(root / "cohn-kanade-images" / subject / seq / f"{subject}_{seq}_{k:08d}.png", 20 * k,
                     size=(32, 24), mode="L")
        emo = root / "Emotion" / subject / seq
        emo.mkdir(parents=True, exist_ok=True)
        if code is not None:
            (emo / f"{subject}_{seq}_{n_frames:08d}_emotion.txt").write_text(f"   {code:.7e}\n")
    sequence("S005", "001", 5, 3)        # disgust
    sequence("S010", "002", 4, 2)        # contempt
    sequence("S010", "003", 3, None)     # unlabelled sequence: not used
    return root


# ---- RAF-DB -------------------------------------------------------------------------------------------------------
def test_rafdb_labels_images_and_splits(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    ds = load_rafdb(root, split="train", size=48, channels=3)
    assert isinstance(ds, FERDataset) and ds.name == "rafdb-train"
    assert ds.labels.tolist() == [C["sadness"], C["surprise"], C["neutral"]]    # codes 5, 1, 7
    assert ds.images.shape == (3, 3, 48, 48) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64 and ds.clean_labels is None
    means = ds.images.float().mean(dim=(1, 2, 3))                  # each image's grey level encodes its code
    assert torch.allclose(means, torch.tensor([150.0, 30.0, 210.0]), atol=3)
    assert ds.classes == L.CLASSES_7
    assert ds.info["split"] == "train" and ds.info["excluded"] == {} and ds.info["skipped"] == []
    test = load_rafdb(root, split="test", size=48, channels=1)
    assert test.labels.tolist() == [C["happiness"], C["fear"]]     # codes 4, 2
    assert test.images.shape == (2, 1, 48, 48)
    original = load_rafdb(root, split="test", size=64, channels=3, aligned=False)
    assert original.images.shape == (2, 3, 64, 64) and original.info["aligned"] is False


def test_rafdb_unknown_code_names_file_and_line(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB", {"train_00001.jpg": 3, "train_00002.jpg": 9})
    with pytest.raises(UnknownLabelError, match=r"list_patition_label\.txt line 2.*'9'"):
        load_rafdb(root)


def test_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere" / "RAF-DB"
    with pytest.raises(DatasetNotFoundError) as err:
        load_rafdb(missing)
    assert isinstance(err.value, FileNotFoundError)
    assert str(missing) in str(err.value) and "EmoLabel/list_patition_label.txt" in str(err.value)


def test_missing_label_file_lists_expected_layout(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    (root / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(DatasetLayoutError) as err:
        load_rafdb(root)
    msg = str(err.value)
    assert str(root / "EmoLabel" / "list_patition_label.txt") in msg and "Image/aligned/" in msg


def test_truncated_jpeg_raises_or_is_skipped_and_reported(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    bad = root / "Image" / "aligned" / "train_00002_aligned.jpg"
    truncate(bad)
    with pytest.raises(CorruptImageError, match="train_00002_aligned.jpg"):
        load_rafdb(root, size=48)
    with pytest.warns(UserWarning, match="skipped 1 image.*1 unreadable image"):
        ds = load_rafdb(root, size=48, skip_bad=True)
    assert ds.info["skipped"] == [str(bad)]
    assert ds.labels.tolist() == [C["sadness"], C["neutral"]] and len(ds) == 2


def test_missing_image_is_a_layout_error_or_skipped(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    gone = root / "Image" / "aligned" / "train_00003_aligned.jpg"
    gone.unlink()
    with pytest.raises(DatasetLayoutError, match="train_00003_aligned.jpg"):
        load_rafdb(root, size=48)
    with pytest.warns(UserWarning):
        ds = load_rafdb(root, size=48, skip_bad=True)
    assert ds.info["skipped"] == [str(gone)] and len(ds) == 2


def test_parallel_decoding_matches_order(tmp_path, monkeypatch):
    codes = {f"train_{i:05d}.jpg": 1 + i % 7 for i in range(1, 81)}
    root = make_rafdb(tmp_path / "RAF-DB", codes)
    monkeypatch.setattr(D, "PARALLEL_MIN", 8)
    ds = load_rafdb(root, size=48, channels=1)
    expected = torch.tensor([L.RAFDB[c] for c in codes.values()])
    assert torch.equal(ds.labels, expected)
    grey = torch.tensor([c * 30.0 for c in codes.values()])
    assert torch.allclose(ds.images.float().mean(dim=(1, 2, 3)), grey, atol=3)


def test_env_var_and_data_root_resolution(tmp_path, monkeypatch):
    root = make_rafdb(tmp_path / "RAF-DB")
    monkeypatch.setenv("FERNB_DATA", str(tmp_path))
    ds = load_rafdb(size=48)
    assert ds.info["root"] == str(root) and len(ds) == 3
    monkeypatch.setenv("FERNB_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere"):
        load_rafdb()
    monkeypatch.delenv("FERNB_DATA")
    with pytest.raises(DatasetNotFoundError, match="FERNB_DATA is not set"):
        load_rafdb()
    assert len(load("rafdb", root, split="test", size=48)) == 2     # root = the dataset's own folder


def test_data_root_is_the_dataset_folder_and_a_parent_is_named(tmp_path):
    """Issue 8: one convention. root (a notebook's data_root) is the dataset's own folder; pointing it at the
    parent folder (what FERNB_DATA holds) or at a wrapper folder names the folder that was meant."""
    make_rafdb(tmp_path / "RAF-DB")
    with pytest.raises(DatasetLayoutError, match=r"does not hold the dataset, but .*RAF-DB does"):
        load_rafdb(tmp_path, size=48)
    make_kdef(tmp_path / "KDEF_and_AKDEF" / "KDEF")
    (tmp_path / "KDEF_and_AKDEF" / "AKDEF").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"KDEF_and_AKDEF/KDEF"):
        load_kdef(tmp_path / "KDEF_and_AKDEF", size=48)
    with pytest.raises(TypeError, match="own folder"):
        load("rafdb", data_root=tmp_path)
    assert R.resolve_root("rafdb", tmp_path / "RAF-DB") == tmp_path / "RAF-DB"


# ---- FER2013 ------------------------------------------------------------------------------------------------------
def test_fer2013_splits_labels_and_pixels(tmp_path):
    root = tmp_path / "FER2013"
    write_fer2013(root / "fer2013.csv", FER_ROWS)
    ds = load_fer2013(root, split="train", size=48, channels=1)
    assert ds.labels.tolist() == [C["anger"], C["happiness"]]      # codes 0, 3
    assert ds.images.shape == (2, 1, 48, 48)
    assert (ds.images[0] == 10).all() and (ds.images[1] == 20).all()
    assert load_fer2013(root, split="val", size=48).labels.tolist() == [C["neutral"]]
    test = load_fer2013(root, split="test", size=64, channels=3)
    assert test.labels.tolist() == [C["sadness"], C["surprise"]] and test.images.shape == (2, 3, 64, 64)
    assert (test.images[1] == 50).all()
    assert len(load_fer2013(root, split="all", size=48)) == 5


def test_fer2013_bad_rows(tmp_path):
    root = tmp_path / "FER2013"
    rows = list(FER_ROWS)
    rows[2] = (6, pixels(30, 2303), "Training")                    # 3rd data row = line 4
    write_fer2013(root / "fer2013.csv", rows)
    with pytest.raises(CorruptImageError, match=r"fer2013\.csv row at line 4: 2303 pixel values"):
        load_fer2013(root, split="all", size=48)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = load_fer2013(root, split="all", size=48, skip_bad=True)
    assert ds.info["skipped"] == [f"{root / 'fer2013.csv'}:line 4"] and len(ds) == 4
    rows[2] = (6, pixels(30, 2303) + " x1", "Training")
    write_fer2013(root / "fer2013.csv", rows)
    with pytest.raises(CorruptImageError, match=r"line 4: pixel value 'x1'"):
        load_fer2013(root, split="all", size=48)
    rows[2] = (7, pixels(30), "Training")
    write_fer2013(root / "fer2013.csv", rows)
    with pytest.raises(UnknownLabelError, match=r"fer2013\.csv row at line 4"):
        load_fer2013(root, split="all", size=48)


# ---- FERPlus ------------------------------------------------------------------------------------------------------
def test_ferplus_majority_soft_labels_and_exclusions(tmp_path):
    root = make_ferplus(tmp_path / "FERPlus")
    ds = load_ferplus(root, split="train", size=48)
    assert ds.num_classes == 8 and ds.classes == L.CLASSES_8
    assert ds.labels.tolist() == [C["happiness"], C["surprise"]]
    assert ds.info["excluded"] == {"no image name": 1, "majority unknown/NF": 1, "no majority": 1}
    assert torch.allclose(ds.soft_labels.sum(1), torch.ones(2))
    assert ds.soft_labels[1, C["surprise"]].item() == pytest.approx(0.6)
    assert ds.soft_labels[1, C["fear"]].item() == pytest.approx(0.4)
    assert (ds.images[1] == 20).all()                              # pixels from the aligned fer2013.csv row
    val = load_ferplus(root, split="val", size=48)
    assert val.labels.tolist() == [C["happiness"]]
    assert val.soft_labels[0, C["contempt"]].item() == pytest.approx(0.1)


def test_ferplus_plurality_breaks_ties_in_canonical_order(tmp_path):
    root = make_ferplus(tmp_path / "FERPlus")
    ds = load_ferplus(root, split="train", size=48, mode="plurality")
    assert ds.labels.tolist() == [C["happiness"], C["surprise"], C["sadness"]]   # sadness/anger tie -> sadness
    assert ds.info["excluded"] == {"no image name": 1, "majority unknown/NF": 1}
    assert torch.allclose(ds.soft_labels[2], torch.tensor([0, 0, .5, 0, 0, 0, .5, 0]))


def test_ferplus_needs_aligned_fer2013(tmp_path):
    root = make_ferplus(tmp_path / "FERPlus", fer_csv=False)
    with pytest.raises(DatasetLayoutError, match="fer2013.csv"):
        load_ferplus(root, size=48)
    other = write_fer2013(tmp_path / "elsewhere" / "fer2013.csv",
                          [(0, pixels(10 * (i + 1)), r[0]) for i, r in enumerate(FERPLUS_ROWS)])
    assert len(load_ferplus(root, size=48, fer2013_csv=other)) == 2
    write_fer2013(root / "fer2013.csv", FER_ROWS[:3])
    with pytest.raises(DatasetLayoutError, match="aligned row by row"):
        load_ferplus(root, size=48)


# ---- AffectNet ----------------------------------------------------------------------------------------------------
def test_affectnet_excludes_non_expressions_and_crops_box(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet")
    ds = load_affectnet(root, split="train", size=48, channels=3)
    assert ds.labels.tolist() == [C["happiness"], C["neutral"]]
    assert ds.info["excluded"] == {"none": 1, "uncertain": 1, "non-face": 1, "contempt": 1}
    assert ds.images.shape == (2, 3, 48, 48)
    assert ds.images.min() >= 250                                  # only the white face box survives the crop
    assert ds.boxes[0].tolist() == [10, 5, 26, 21]
    assert ds.meta["valence"].tolist() == [0.0, 1.25]
    eight = load("affectnet8", root=root, size=48, channels=1)
    assert eight.num_classes == 8 and eight.name == "affectnet8-train"
    assert eight.labels.tolist() == [C["happiness"], C["contempt"], C["neutral"]]
    assert "contempt" not in eight.info["excluded"]
    assert load_affectnet(root, split="test", size=48).labels.tolist() == [C["surprise"]]


def test_affectnet_headerless_file_list_and_bad_header(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet", val_codes=(3, 10, 6), val_header=False)
    val = load_affectnet(root, split="val", size=48)
    assert val.labels.tolist() == [C["surprise"], C["anger"]] and val.info["excluded"]["non-face"] == 1
    lists = root / "Manually_Annotated_file_lists"
    (lists / "training.csv").write_text("path,x,y,w,h,marks,emotion,v,a\n0/tra000.png,10,5,16,16,,1,0,0\n")
    with pytest.raises(DatasetLayoutError, match=r"training\.csv.*lacks column"):
        load_affectnet(root, size=48)


@pytest.mark.parametrize("code", ["11", "abc"])
def test_affectnet_unknown_code(tmp_path, code):
    root = make_affectnet(tmp_path / "AffectNet", train_codes=(1, code))
    with pytest.raises(UnknownLabelError, match=r"training\.csv row at line 3"):
        load_affectnet(root, size=48)


# ---- KDEF ---------------------------------------------------------------------------------------------------------
def test_kdef_labels_identities_and_angles(tmp_path):
    root = make_kdef(tmp_path / "KDEF")
    ds = load_kdef(root, size=48, channels=3)
    assert ds.labels.tolist() == [C["fear"], C["happiness"], C["neutral"], C["sadness"], C["surprise"]]
    assert ds.info["subjects"] == ["F01", "M02"]
    assert ds.identities.tolist() == [0, 0, 1, 0, 0]                # sessions A and B of F01 are one person
    assert [ds.info["angles"][a] for a in ds.meta["angle"].tolist()] == ["S", "FL", "HR", "S", "HL"]
    assert ds.meta["session"].tolist() == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 48, 48)
    straight = load_kdef(root, size=48, angles=("S",))
    assert straight.labels.tolist() == [C["fear"], C["sadness"]] and straight.info["angles_used"] == ["S"]
    with pytest.raises(ValueError, match="angles"):
        load_kdef(root, angles=("XX",))
    with pytest.raises(ValueError, match="split"):
        load_kdef(root, split="train")


def test_kdef_unknown_expression_names_file(tmp_path):
    root = make_kdef(tmp_path / "KDEF", {"AF01/AF01AFS.JPG": 4, "AF01/AF01XXS.JPG": 0})
    with pytest.raises(UnknownLabelError, match="AF01XXS.JPG"):
        load_kdef(root)


# ---- SFEW ---------------------------------------------------------------------------------------------------------
def test_sfew_folders(tmp_path):
    root = make_sfew(tmp_path / "SFEW2")
    ds = load_sfew(root, split="train", size=48, channels=1)
    assert ds.labels.tolist() == [C["anger"], C["happiness"], C["happiness"]]
    assert ds.info["ignored_files"] == 1 and ds.images.shape == (3, 1, 48, 48)
    assert load_sfew(root, split="val", size=48).labels.tolist() == [C["sadness"]]


def test_sfew_unknown_folder_names_it(tmp_path):
    root = make_sfew(tmp_path / "SFEW2")
    save_img(root / "Train" / "Contempt" / "x.png", 0)
    with pytest.raises(UnknownLabelError, match="Contempt"):
        load_sfew(root, size=48)


# ---- CK+ ----------------------------------------------------------------------------------------------------------
def test_ckplus_peak_frames_and_contempt(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    ds = load_ckplus(root, size=48)
    assert ds.num_classes == 8 and len(ds) == 6
    assert ds.labels.tolist() == [C["disgust"]] * 3 + [C["contempt"]] * 3
    assert ds.identities.tolist() == [5, 5, 5, 10, 10, 10]
    assert ds.images.shape == (6, 1, 48, 48)
    assert ds.images[:3].float().mean(dim=(1, 2, 3)).tolist() == [60.0, 80.0, 100.0]   # last 3 of 5 frames
    seven = load_ckplus(root, size=48, num_classes=7)
    assert len(seven) == 3 and seven.info["excluded"] == {"contempt": 3}
    with_neutral = load_ckplus(root, size=48, include_neutral_first_frame=True)
    assert len(with_neutral) == 8 and with_neutral.labels.tolist().count(C["neutral"]) == 2
    assert with_neutral.images[0].float().mean().item() == 20.0          # first frame
    everything = load_ckplus(root, size=48, channels=3, peak_frames=10, include_neutral_first_frame=True)
    assert len(everything) == 9 and everything.images.shape[1] == 3     # first frame not duplicated


def test_ckplus_unknown_code_names_file(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    bad = root / "Emotion" / "S005" / "001" / "S005_001_00000005_emotion.txt"
    bad.write_text("   9.0000000e+00\n")
    with pytest.raises(UnknownLabelError, match="S005_001_00000005_emotion.txt"):
        load_ckplus(root)


# ---- dispatcher, arguments, cache ---------------------------------------------------------------------------------
def test_dispatcher_and_argument_checks(tmp_path):
    assert R.DATASETS == ("rafdb", "fer2013", "ferplus", "affectnet", "affectnet8", "kdef", "sfew", "ckplus")
    assert set(R.DATASETS) == set(R.DEFAULT_FOLDERS) == set(R.LAYOUTS)
    with pytest.raises(ValueError, match="unknown dataset"):
        load("mnist", root=tmp_path)
    root = make_rafdb(tmp_path / "RAF-DB")
    with pytest.raises(ValueError, match="size"):
        load_rafdb(root, size=32)
    with pytest.raises(ValueError, match="channels"):
        load_rafdb(root, channels=2)
    with pytest.raises(ValueError, match="num_classes"):
        load("affectnet", root=tmp_path, num_classes=8)
    ck = make_ckplus(tmp_path / "CK+")
    assert load("ckplus", root=ck, size=48).info["split"] == "all"


def test_reader_output_survives_cache_roundtrip(tmp_path):
    ds = load_kdef(make_kdef(tmp_path / "KDEF"), size=48)
    ds.save(tmp_path / "kdef.pt")
    back = FERDataset.load(tmp_path / "kdef.pt")
    assert torch.equal(back.images, ds.images) and torch.equal(back.meta["angle"], ds.meta["angle"])
    assert back.info["subjects"] == ["F01", "M02"]
