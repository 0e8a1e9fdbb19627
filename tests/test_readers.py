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
from fernb.data.readers import (BadFaceBoxError, CorruptImageError, DatasetLayoutError, DatasetNotFoundError,
                                MissingImageError, UnknownLabelError,
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


# ---- issue 8: the datasets as they are actually downloaded ----------------------------------------------------------
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64    # what a ._<name> file holds


def add_macos_litter(folder):
    """What a macOS archive leaves beside every file: ._<name> resource forks and a .DS_Store per folder, plus a
    __MACOSX/ folder at the top. Returns how many hidden entries were added under `folder`."""
    added = 0
    for d in sorted(p for p in [folder, *folder.rglob("*")] if p.is_dir()):
        for f in sorted(d.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                (d / f"._{f.name}").write_bytes(APPLEDOUBLE)
                added += 1
        (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 32)
        added += 1
    mac = folder / "__MACOSX"
    mac.mkdir()
    (mac / "._x.png").write_bytes(APPLEDOUBLE)
    return added + 1


# 1. KDEF's misnamed release files
def test_kdef_release_misnamed_files_are_read_under_their_right_names(tmp_path):
    files = dict(KDEF_FILES, **{"AF31/AF31V.JPG": None, "AM31/AM31H.JPG": None, "AF31/AF31NES.JPG": 0})
    root = make_kdef(tmp_path / "KDEF", files)
    ds = load_kdef(root, size=48)                          # raised DatasetLayoutError on AF31V.JPG before
    assert len(ds) == 8
    subjects = ds.info["subjects"]
    f31 = (ds.identities == subjects.index("F31")).nonzero().flatten().tolist()
    m31 = (ds.identities == subjects.index("M31")).nonzero().flatten().tolist()
    by_angle = {ds.info["angles"][ds.meta["angle"][i]]: ds.labels[i].item() for i in f31}
    assert by_angle == {"S": C["neutral"], "HL": C["sadness"]}        # AF31V.JPG = AF31SAHL
    assert [(ds.info["angles"][ds.meta["angle"][i]], ds.labels[i].item()) for i in m31] == [("HR", C["surprise"])]
    assert ds.info["quirks"] == ["AF31/AF31V.JPG read as AF31SAHL (a known misnamed file of the KDEF release)",
                                 "AM31/AM31H.JPG read as AM31SUHR (a known misnamed file of the KDEF release)"]
    assert ds.info["excluded"] == {}
    save_img(root / "AF31" / "AF31SAHL.JPG", 100, size=(30, 40))      # a copy already renamed by hand
    again = load_kdef(root, size=48)
    assert len(again) == 8 and again.info["excluded"] == {"misnamed duplicate": 1}
    assert "left out because AF31SAHL is present too" in again.info["quirks"][0]


def test_kdef_other_unparsable_names_still_raise(tmp_path):
    root = make_kdef(tmp_path / "KDEF", dict(KDEF_FILES, **{"AF01/AF01.JPG": None}))
    with pytest.raises(DatasetLayoutError, match="AF01.JPG"):
        load_kdef(root, size=48)


def test_kdef_blank_release_images_are_kept_and_listed(tmp_path):
    root = make_kdef(tmp_path / "KDEF")
    noise = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "AF01" / "AF01AFS.JPG")
    ds = load_kdef(root, size=48)
    assert len(ds) == 5
    assert str(root / "AF01" / "AF01AFS.JPG") not in ds.info["uniform_images"]
    assert len(ds.info["uniform_images"]) == 4               # the other fixture images are one flat grey


# 3. malformed csv rows name the file and the line
def _rewrite_line(path, line_no, transform):
    lines = path.read_text().splitlines(keepends=True)
    lines[line_no - 1] = transform(lines[line_no - 1])
    path.write_text("".join(lines))


def _drop_fields(k):
    return lambda line: ",".join(line.rstrip("\r\n").split(",")[:-k]) + "\r\n"


def test_ferplus_short_row_names_file_and_line(tmp_path):
    root = make_ferplus(tmp_path / "FERPlus")
    _rewrite_line(root / "fer2013new.csv", 3, _drop_fields(5))   # was a bare KeyError: 'disgust'
    with pytest.raises(DatasetLayoutError, match=r"fer2013new\.csv line 3: malformed row with 7 field\(s\), "
                                                 r"expected 12"):
        load_ferplus(root, size=48)


@pytest.mark.parametrize("which,line,transform,expect", [
    ("fer2013.csv", 2, _drop_fields(1), r"fer2013\.csv line 2: malformed row with 2 field\(s\), expected 3"),
    ("fer2013.csv", 5, lambda l: l.rstrip("\r\n") + ",extra\r\n", r"fer2013\.csv line 5: malformed row with 4"),
    ("fer2013new.csv", 6, lambda l: l.rstrip("\r\n") + ",7,8\r\n", r"fer2013new\.csv line 6: malformed row with 14"),
    ("fer2013new.csv", 2, lambda l: "Training\r\n", r"fer2013new\.csv line 2: malformed row with 1 field"),
])
def test_every_ferplus_csv_row_error_names_file_and_line(tmp_path, which, line, transform, expect):
    root = make_ferplus(tmp_path / "FERPlus")
    _rewrite_line(root / which, line, transform)
    with pytest.raises(DatasetLayoutError, match=expect):
        load_ferplus(root, split="all", size=48)


def test_fer2013_short_row_and_trailing_empty_fields(tmp_path):
    root = tmp_path / "FER2013"
    write_fer2013(root / "fer2013.csv", FER_ROWS)
    _rewrite_line(root / "fer2013.csv", 4, lambda l: l.rstrip("\r\n") + ",,\r\n")   # trailing commas: tolerated
    assert len(load_fer2013(root, split="all", size=48)) == 5
    _rewrite_line(root / "fer2013.csv", 3, lambda l: l.split(",")[0] + "\r\n")
    with pytest.raises(DatasetLayoutError, match=r"fer2013\.csv line 3: malformed row with 1 field"):
        load_fer2013(root, split="all", size=48)


@pytest.mark.parametrize("transform,expect", [
    (_drop_fields(3), r"training\.csv line 2: malformed row with 6 field\(s\), expected 9"),
    (lambda l: l.rstrip("\r\n") + ",1,2\r\n", r"training\.csv line 2: malformed row with 11"),
    (lambda l: "," + l.split(",", 1)[1], r"training\.csv row at line 2: empty subDirectory_filePath"),
    (lambda l: l.replace(",10,5,16,16,", ",10,x,16,16,"), r"training\.csv row at line 2: face box must be numbers"),
])
def test_affectnet_malformed_rows_name_file_and_line(tmp_path, transform, expect):
    root = make_affectnet(tmp_path / "AffectNet")
    _rewrite_line(root / "Manually_Annotated_file_lists" / "training.csv", 2, transform)
    with pytest.raises(DatasetLayoutError, match=expect):
        load_affectnet(root, size=48)


def test_stray_quote_names_the_lines_it_swallows(tmp_path):
    """A double quote that is never closed makes the csv module read the rest of the file as one field: the error
    names the line the row starts on, the line it ends on, and the quote."""
    root = tmp_path / "FER2013"
    write_fer2013(root / "fer2013.csv", FER_ROWS)
    _rewrite_line(root / "fer2013.csv", 3, lambda l: l.replace(",", ',"', 1))          # 3,"20 20 ...,Training
    with pytest.raises(DatasetLayoutError, match=r"fer2013\.csv lines 3-6: malformed row with 2 field\(s\), "
                                                 r"expected 3 .*; one row runs over several lines: a double quote"):
        load_fer2013(root, split="all", size=48)
    # a big file: the swallowed lines pass the csv module's field size limit (csv.Error)
    write_fer2013(root / "fer2013.csv", [(0, pixels(10), "Training")] * 30)
    _rewrite_line(root / "fer2013.csv", 4, lambda l: l.replace(",", ',"', 1))
    with pytest.raises(DatasetLayoutError, match=r"fer2013\.csv lines 4-\d+: malformed csv \(field larger than "
                                                 r"field limit .*\); one row runs over several lines"):
        load_fer2013(root, split="all", size=48)


def test_row_spanning_lines_with_the_right_field_count_is_malformed(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet", train_codes=(1, 0, 2))
    csv_path = root / "Manually_Annotated_file_lists" / "training.csv"
    _rewrite_line(csv_path, 2, lambda l: l.replace("1.0;2.0;3.0;4.0", '"1.0;2.0', 1))
    _rewrite_line(csv_path, 3, lambda l: l.replace("1.0;2.0;3.0;4.0", '3.0"', 1))
    with pytest.raises(DatasetLayoutError, match=r"training\.csv lines 2-3: malformed row; one row runs over"):
        load_affectnet(root, size=48)


@pytest.mark.parametrize("which,line,transform,error,expect", [
    ("fer2013.csv", 3, lambda l: l.replace("Training", "Validation"), DatasetLayoutError,
     r"fer2013\.csv row at line 3: Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
    ("fer2013new.csv", 3, lambda l: l.replace("Training", "PublicTest"), DatasetLayoutError,
     r"fer2013new\.csv line 3 has Usage 'PublicTest' but .*fer2013\.csv line 3 has 'Training'"),
    ("fer2013new.csv", 4, lambda l: l.replace(",6,", ",six,"), DatasetLayoutError,
     r"fer2013new\.csv line 4: vote counts must be numbers"),
    ("fer2013new.csv", 4, lambda l: l.replace(",6,", ",-6,"), DatasetLayoutError,
     r"fer2013new\.csv line 4: vote counts must be finite and >= 0"),
    ("fer2013.csv", 7, lambda l: l.replace(" 60", " 600", 1), CorruptImageError,
     r"fer2013\.csv row at line 7: pixel values must lie in 0\.\.255"),
])
def test_every_other_bad_ferplus_row_names_file_and_line(tmp_path, which, line, transform, error, expect):
    root = make_ferplus(tmp_path / "FERPlus")
    _rewrite_line(root / which, line, transform)
    with pytest.raises(error, match=expect):
        load_ferplus(root, split="all", size=48)


@pytest.mark.parametrize("line,expect", [
    ("train_00002.jpg 1 extra", r"list_patition_label\.txt line 2: expected '<image name> <code>'"),
    ("val_00002.jpg 1", r"list_patition_label\.txt line 2: image name 'val_00002.jpg' does not start with train_"),
])
def test_rafdb_malformed_label_line_names_file_and_line(tmp_path, line, expect):
    root = make_rafdb(tmp_path / "RAF-DB")
    _rewrite_line(root / "EmoLabel" / "list_patition_label.txt", 2, lambda l: line + "\n")
    with pytest.raises(DatasetLayoutError, match=expect):
        load_rafdb(root, size=48)


# 4. SFEW as distributed: Train/Train_Aligned_Faces/<Class>/
def make_sfew_distributed(root, top_level=False):
    """SFEW 2.0 as its archives unpack: Train/Train_Aligned_Faces/<Class>/, Val/Val_Aligned_Faces/<Class>/ (or,
    with top_level, Train_Aligned_Faces/<Class>/ at the root)."""
    def base(split):
        name = split.capitalize()
        return root / f"{name}_Aligned_Faces" if top_level else root / name / f"{name}_Aligned_Faces"
    save_img(base("train") / "Angry" / "Airheads_000519240.png", 10)
    save_img(base("train") / "Happy" / "Airheads_000701080.png", 20)
    save_img(base("train") / "Happy" / "21_000123400.png", 30)
    save_img(base("val") / "Sad" / "Bridesmaids_000301040.png", 40)
    return root


@pytest.mark.parametrize("top_level", [False, True])
def test_sfew_nested_aligned_faces_layout(tmp_path, top_level):
    root = make_sfew_distributed(tmp_path / "SFEW2", top_level)
    ds = load_sfew(root, split="train", size=48, channels=1)   # "Train_Aligned_Faces" was an unknown class before
    assert ds.labels.tolist() == [C["anger"], C["happiness"], C["happiness"]]
    assert ds.info["layout"] == ("Train_Aligned_Faces" if top_level else "Train/Train_Aligned_Faces")
    assert ds.info["movies"] == ["21", "Airheads"] and ds.meta["movie"].tolist() == [1, 0, 1]
    assert ds.images.float().mean(dim=(1, 2, 3)).tolist() == [10.0, 30.0, 20.0]
    val = load_sfew(root, split="val", size=48)
    assert val.labels.tolist() == [C["sadness"]] and val.info["layout"].endswith("Val_Aligned_Faces")


def test_sfew_both_variants_prefers_aligned_unless_told(tmp_path):
    root = make_sfew_distributed(tmp_path / "SFEW2")
    make_sfew(root)                                             # Train/<Class>/ beside Train/Train_Aligned_Faces/
    assert len(load_sfew(root, size=48)) == 3 and load_sfew(root, size=48).info["layout"].endswith("Faces")
    flat = load_sfew(root, size=48, aligned=False)
    assert flat.info["layout"] == "Train" and flat.labels.tolist() == [C["anger"], C["happiness"], C["happiness"]]
    with pytest.raises(DatasetLayoutError, match="aligned faces"):
        load_sfew(make_sfew(tmp_path / "plain"), size=48, aligned=True)
    save_img(root / "Train" / "Train_Aligned_Faces" / "Contempt" / "x.png", 0)
    with pytest.raises(UnknownLabelError, match="Contempt"):
        load_sfew(root, size=48)


# 5. macOS litter: ._* resource files, .DS_Store, __MACOSX/
def test_macos_litter_is_skipped_and_counted_kdef(tmp_path):
    root = make_kdef(tmp_path / "KDEF")
    clean = load_kdef(root, size=48)
    added = add_macos_litter(root)
    ds = load_kdef(root, size=48)                                # DatasetLayoutError on ._AF01AFS.JPG before
    assert torch.equal(ds.images, clean.images) and torch.equal(ds.labels, clean.labels)
    assert ds.info["hidden_files"] == added and clean.info["hidden_files"] == 0


def test_macos_litter_is_skipped_and_counted_sfew(tmp_path):
    root = make_sfew_distributed(tmp_path / "SFEW2")
    clean = load_sfew(root, size=48)
    add_macos_litter(root)
    ds = load_sfew(root, size=48)                                # CorruptImageError on ._Airheads_...png before
    assert torch.equal(ds.images, clean.images) and torch.equal(ds.labels, clean.labels)
    assert ds.info["hidden_files"] == 3 + 3 and ds.info["ignored_files"] == 0   # 3 ._ files + 3 .DS_Store read past


def test_macos_litter_is_skipped_and_counted_ckplus(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    clean = load_ckplus(root, size=48)
    add_macos_litter(root)
    ds = load_ckplus(root, size=48)                              # UnknownLabelError on ._*_emotion.txt before
    assert torch.equal(ds.images, clean.images) and torch.equal(ds.labels, clean.labels)
    assert ds.info["hidden_files"] > 0


def test_is_hidden_rule():
    from fernb.data.files import is_hidden
    assert all(is_hidden(n) for n in ("._a.jpg", ".DS_Store", "__MACOSX", "Thumbs.db", "desktop.ini", ".git"))
    assert not any(is_hidden(n) for n in ("a.jpg", "AF01", "S005_001_00000011_emotion.txt", "_x.png"))


# 6. label files with a byte-order mark, or in another encoding
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_rafdb_label_file_encodings_are_read(tmp_path, encoding):
    root = make_rafdb(tmp_path / "RAF-DB")
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    text = label_file.read_text()
    label_file.write_bytes(text.replace("\n", "\r\n").encode(encoding))   # Windows line ends too
    ds = load_rafdb(root, size=48)                     # BOM: "does not start with train_"; UTF-16: UnicodeDecodeError
    assert ds.labels.tolist() == [C["sadness"], C["surprise"], C["neutral"]]


def test_label_file_in_another_encoding_names_file_and_encoding(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_bytes("train_00001.jpg 5\ntrain_caf\u00e9.jpg 1\n".encode("latin-1"))
    with pytest.raises(DatasetLayoutError, match=r"list_patition_label\.txt line 2 cannot be read as utf-8: byte 0xe9"):
        load_rafdb(root, size=48)


def test_csv_with_bom_and_utf16_and_bad_bytes(tmp_path):
    root = tmp_path / "FER2013"
    write_fer2013(root / "fer2013.csv", FER_ROWS)
    text = (root / "fer2013.csv").read_text()
    for encoding in ("utf-8-sig", "utf-16"):
        (root / "fer2013.csv").write_bytes(text.encode(encoding))
        assert load_fer2013(root, split="all", size=48).labels.tolist() == [6, 1, 0, 2, 3]
    (root / "fer2013.csv").write_bytes(text.encode() + b"3,\xff\xfe,Training\r\n")
    with pytest.raises(DatasetLayoutError, match=r"fer2013\.csv line 7 cannot be read as utf-8: byte 0xff"):
        load_fer2013(root, split="all", size=48)


def test_ckplus_emotion_file_with_bom(tmp_path):
    root = make_ckplus(tmp_path / "CK+")
    ef = root / "Emotion" / "S005" / "001" / "S005_001_00000005_emotion.txt"
    ef.write_bytes("   3.0000000e+00\r\n".encode("utf-16"))
    assert load_ckplus(root, size=48).labels.tolist()[:3] == [C["disgust"]] * 3


# 7. AffectNet: a face box outside its image is a box problem, counted under its own reason
def test_affectnet_box_outside_image_is_named_and_counted(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet", train_codes=(1, 0, 2))
    csv_path = root / "Manually_Annotated_file_lists" / "training.csv"
    _rewrite_line(csv_path, 3, lambda l: l.replace(",10,5,16,16,", ",500,400,16,16,"))
    truncate(root / "Manually_Annotated_Images" / "2" / "tra002.png")
    with pytest.raises(BadFaceBoxError, match=r"face box x0,y0,x1,y1 = 500,400,516,416 \(from .*training\.csv "
                                              r"line 3\) lies outside the 40x30 image .*tra001\.png"):
        load_affectnet(root, size=48)                    # was "CorruptImageError: cannot decode image"
    with pytest.warns(UserWarning, match="1 face box outside image, 1 unreadable image"):
        ds = load_affectnet(root, size=48, skip_bad=True)
    assert ds.labels.tolist() == [C["happiness"]]
    assert ds.info["skipped_reasons"] == {"face box outside image": 1, "unreadable image": 1}
    assert ds.info["skipped"][0].endswith("tra001.png")


def test_affectnet_empty_box_is_a_box_error(tmp_path):
    root = make_affectnet(tmp_path / "AffectNet", train_codes=(1,))
    _rewrite_line(root / "Manually_Annotated_file_lists" / "training.csv", 2,
                  lambda l: l.replace(",10,5,16,16,", ",10,5,0,16,"))
    with pytest.raises(BadFaceBoxError, match=r"10,5,10,21 \(from .*line 2\) is empty"):
        load_affectnet(root, size=48)


def test_missing_and_unreadable_are_separate_reasons(tmp_path):
    root = make_rafdb(tmp_path / "RAF-DB")
    (root / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
    truncate(root / "Image" / "aligned" / "train_00002_aligned.jpg")
    with pytest.raises(CorruptImageError, match="train_00002"):      # the first bad image in file order
        load_rafdb(root, size=48)
    with pytest.raises(MissingImageError, match="train_00003"):          # a DatasetLayoutError, as before
        R.plan_rafdb(root).take([2]).decode(48, 3)
    with pytest.warns(UserWarning):
        ds = load_rafdb(root, size=48, skip_bad=True)
    assert ds.info["skipped_reasons"] == {"unreadable image": 1, "missing image": 1} and len(ds) == 1
