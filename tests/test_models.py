"""Model registry: torchvision names, module:callable, checkpoints, inputs, and their errors."""

import json

import pytest
import torch

from autotune.errors import AutotuneError, ModelError
from autotune.models import ModelSpec, build, default_input_shape, list_models

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests


def test_spec_labels_and_json_round_trip():
    spec = ModelSpec("resnet50", batch_size=8, input_shapes=[3, 160, 160], checkpoint="w.pt")
    assert spec.input_shapes == ((3, 160, 160),)
    assert spec.label == "resnet50" and spec.study_label == "resnet50-bs8"
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("kwargs,bad", [
    ({"batch_size": 0}, "batch size 0"),
    ({"batch_size": True}, "batch size True"),
    ({"input_shapes": (3, -1, 4)}, "input shape (3, -1, 4)"),
    ({"input_shapes": ()}, "input shape ()"),
])
def test_spec_rejects_bad_fields(kwargs, bad):
    with pytest.raises(ModelError, match="expected") as err:
        ModelSpec("resnet18", **kwargs)
    assert bad in str(err.value)


def test_spec_from_dict_names_unknown_keys():
    with pytest.raises(ModelError, match=r"unknown key\(s\) batch.*valid keys: name, batch_size"):
        ModelSpec.from_dict({"name": "resnet18", "batch": 2})


def test_errors_share_the_project_root():
    assert issubclass(ModelError, AutotuneError)


def test_list_models_is_torchvision_classification():
    names = list_models()
    assert {"resnet50", "mobilenet_v3_large", "vit_b_16"} <= set(names)
    assert "fasterrcnn_resnet50_fpn" not in names  # detection, not classification


def test_default_input_shapes_follow_torchvision_weights():
    assert default_input_shape("resnet50") == (3, 224, 224)
    assert default_input_shape("inception_v3") == (3, 299, 299)
    assert default_input_shape("vit_h_14") == (3, 224, 224)  # built without weights: 224


def test_torchvision_build_is_eval_seeded_and_batched():
    model, inputs = build(ModelSpec("resnet18", batch_size=2))
    assert not model.training
    assert [tuple(x.shape) for x in inputs] == [(2, 3, 224, 224)]
    again, inputs_again = build(ModelSpec("resnet18", batch_size=2))
    torch.testing.assert_close(again.state_dict(), model.state_dict())
    torch.testing.assert_close(inputs_again, inputs)


def test_input_shape_overrides_the_default_and_check_passes():
    _, (x,) = build(ModelSpec("resnet18", batch_size=3, input_shapes=(3, 64, 64)), check=True)
    assert x.shape == (3, 3, 64, 64)


def test_unknown_torchvision_name_suggests_close_names():
    with pytest.raises(ModelError) as err:
        build(ModelSpec("resnet5"))
    message = str(err.value)
    assert "'resnet5'" in message and "resnet50" in message and "autotune models" in message


@pytest.mark.parametrize("name,shape", [
    ("squeezenet1_1", (3, 2, 2)),  # too small for its unpadded convs (resnets pool 2x2 fine)
    ("resnet18", (1, 64, 64)),     # wrong channel count
])
def test_impossible_input_shape_is_caught_by_check(name, shape):
    with pytest.raises(ModelError) as err:
        build(ModelSpec(name, input_shapes=shape), check=True)
    message = str(err.value)
    assert repr(name) in message and str((1, *shape)) in message and "--input-shape" in message


def test_callable_returning_a_module_needs_an_input_shape():
    with pytest.raises(ModelError, match=r"returns only a module.*--input-shape"):
        build(ModelSpec("user_models:module_only"))
    model, (x,) = build(ModelSpec("user_models:module_only", batch_size=2, input_shapes=(3, 8, 8)),
                        check=True)
    assert x.shape == (2, 3, 8, 8) and not model.training


def test_callable_with_inputs_and_with_input_fn():
    model, (x,) = build(ModelSpec("user_models:with_inputs"), check=True)
    assert x.shape == (1, 3, 8, 8)
    _, (x,) = build(ModelSpec("user_models:with_input_fn", batch_size=4), check=True)
    assert x.shape == (4, 3, 8, 8)
    _, (again,) = build(ModelSpec("user_models:with_input_fn", batch_size=4))
    torch.testing.assert_close(again, x)  # seeded: every process measures the same input
    model, _ = build(ModelSpec("user_models:Factories.tiny", input_shapes=(3, 8, 8)))
    assert isinstance(model, torch.nn.Module)


def test_fixed_example_inputs_must_match_batch_size():
    with pytest.raises(ModelError, match=r"\(1, 3, 8, 8\).*batch size 2.*example_input_fn"):
        build(ModelSpec("user_models:with_inputs", batch_size=2))


def test_callable_inputs_and_input_shape_conflict():
    with pytest.raises(ModelError, match=r"returns its own example inputs.*drop --input-shape"):
        build(ModelSpec("user_models:with_inputs", input_shapes=(3, 8, 8)))


@pytest.mark.parametrize("name,problem", [
    ("no_such_module_xyz:build", "cannot import module 'no_such_module_xyz'"),
    ("user_models:missing", "has no attribute 'missing'"),
    ("user_models:not_callable", "'not_callable' is not callable"),
    ("user_models:broken", "RuntimeError: weights server unreachable"),
    ("user_models:not_a_module", "returned str"),
    ("user_models:", "expected module:callable"),
])
def test_bad_callable_specs_name_the_spec_and_the_contract(name, problem):
    with pytest.raises(ModelError) as err:
        build(ModelSpec(name, input_shapes=(3, 8, 8)))
    message = str(err.value)
    assert repr(name) in message and problem in message
    if name != "user_models:broken":
        assert "module:callable returning an nn.Module" in message


def test_checkpoint_weights_are_loaded(tmp_path):
    model, _ = build(ModelSpec("user_models:module_only", input_shapes=(3, 8, 8)))
    state = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    loaded, _ = build(ModelSpec("user_models:module_only", input_shapes=(3, 8, 8),
                                checkpoint=str(tmp_path / "w.pt")))
    torch.testing.assert_close(loaded.state_dict(), state)


def test_missing_checkpoint_names_the_file(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(ModelError, match=r"checkpoint file '.*nope\.pt' not found.*state_dict"):
        build(ModelSpec("user_models:module_only", input_shapes=(3, 8, 8), checkpoint=path))


def test_checkpoint_with_other_keys_names_the_file_and_keys(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    spec = ModelSpec("user_models:module_only", input_shapes=(3, 8, 8),
                     checkpoint=str(tmp_path / "other.pt"))
    with pytest.raises(ModelError) as err:
        build(spec)
    message = str(err.value)
    assert "other.pt" in message and "missing keys 0.weight" in message
    assert "unexpected keys encoder.weight" in message


def test_checkpoint_with_wrong_shapes_names_the_file(tmp_path):
    model, _ = build(ModelSpec("user_models:module_only", input_shapes=(3, 8, 8)))
    state = dict(model.state_dict(), **{"4.weight": torch.zeros(7, 4)})
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(ModelError, match=r"shapes\.pt.*does not fit.*4\.weight"):
        build(ModelSpec("user_models:module_only", input_shapes=(3, 8, 8),
                        checkpoint=str(tmp_path / "shapes.pt")))


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ModelError, match=r"list\.pt.*holds a list; expected a state_dict"):
        build(ModelSpec("user_models:module_only", input_shapes=(3, 8, 8),
                        checkpoint=str(tmp_path / "list.pt")))


def test_random_weights_answer_differently_for_different_inputs():
    # torchvision zero-initialises ViT's head: left so, every input answers zeros, and an accuracy
    # gate comparing int8 with float32 on that passes whatever int8 does inside
    model, _ = build(ModelSpec("vit_b_32"))
    with torch.no_grad():
        answers = model(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(answers[0], answers[1])
    assert torch.equal(build(ModelSpec("vit_b_32"))[0].heads.head.weight, model.heads.head.weight)


def test_a_callables_zero_weights_are_left_as_the_user_made_them():
    model, _ = build(ModelSpec("user_models:zero_head", input_shapes=(4,)))
    assert not model.weight.any()
