"""Multi-task attribute heads: vocabularies, label encoding, masked loss, accuracy."""

import math

import pytest
import torch
import torch.nn.functional as F

from age_estimation.data.records import Record
from age_estimation.models.attributes import (
    MISSING,
    AttributeHeads,
    attribute_accuracy,
    attribute_vocab,
    encode_attributes,
)


def record(**attrs) -> Record:
    return Record(path="x.jpg", age=30.0, id="x", attrs=attrs)


UTK = [record(gender="1", race="10"), record(gender="0", race="2"), record(gender="1", race="4")]


def test_vocab_orders_numeric_codes_numerically_and_strings_alphabetically():
    assert attribute_vocab(UTK, ["gender", "race"]) == {"gender": ["0", "1"],
                                                        "race": ["2", "4", "10"]}
    appa = [record(gender="male", makeup="makeup"), record(gender="female", makeup=""),
            record(gender="male")]
    assert attribute_vocab(appa, ["gender", "makeup"]) == {"gender": ["female", "male"],
                                                          "makeup": ["makeup"]}
    with pytest.raises(ValueError, match="happiness"):
        attribute_vocab(appa, ["happiness"])


def test_encode_marks_missing_and_unseen_values():
    vocab = {"gender": ["0", "1"], "race": ["0", "1", "2"]}
    records = [record(gender="1", race="2"), record(race="0"), record(gender=" 0 ", race="nan"),
               record(gender="1", race="7")]
    labels = encode_attributes(records, vocab)
    assert labels.dtype == torch.long
    assert labels.tolist() == [[1, 2], [MISSING, 0], [0, MISSING], [1, MISSING]]
    assert encode_attributes([], vocab).shape == (0, 2)


def test_loss_is_weighted_cross_entropy_per_image():
    heads = AttributeHeads(4, {"gender": ["0", "1"], "race": ["0", "1", "2"]}, [1.0, 0.5])
    logits = heads(torch.randn(3, 4))
    assert logits["gender"].shape == (3, 2) and logits["race"].shape == (3, 3)
    labels = torch.tensor([[1, 2], [0, 0], [1, 1]])
    expected = (F.cross_entropy(logits["gender"], labels[:, 0], reduction="none")
                + 0.5 * F.cross_entropy(logits["race"], labels[:, 1], reduction="none"))
    torch.testing.assert_close(heads.loss(logits, labels), expected)


def test_missing_attribute_is_masked_out_of_the_loss_and_its_gradient():
    heads = AttributeHeads(4, {"gender": ["0", "1"], "race": ["0", "1", "2"]})
    features = torch.randn(2, 4)
    logits = heads(features)
    labels = torch.tensor([[1, MISSING], [MISSING, MISSING]])
    loss = heads.loss(logits, labels)
    present_only = F.cross_entropy(logits["gender"][:1], labels[:1, 0], reduction="none")
    torch.testing.assert_close(loss[:1], present_only)
    assert loss[1].item() == 0.0
    loss.sum().backward()
    assert heads.classifiers["race"].weight.grad.abs().sum().item() == 0.0
    assert heads.classifiers["gender"].weight.grad.abs().sum().item() > 0.0


def test_weights_must_match_the_attributes():
    with pytest.raises(ValueError, match="ATTRIBUTE_WEIGHTS"):
        AttributeHeads(4, {"gender": ["0", "1"]}, [1.0, 2.0])


def test_accuracy_and_predict():
    vocab = {"gender": ["female", "male"], "race": ["a", "b", "c"]}
    heads = AttributeHeads(2, vocab)
    logits = {"gender": torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]),
              "race": torch.tensor([[0.0, 1.0, 0.0]] * 3)}
    labels = torch.tensor([[0, MISSING], [0, MISSING], [MISSING, MISSING]])
    accuracy = attribute_accuracy(logits, labels, heads.names)
    assert accuracy["gender"] == pytest.approx(0.5)
    assert math.isnan(accuracy["race"])
    assert heads.predict(logits) == {"gender": ["female", "male", "female"],
                                     "race": ["b", "b", "b"]}
