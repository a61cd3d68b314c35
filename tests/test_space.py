"""Search spaces: YAML validation with file:line errors, host restriction, conditional sampling."""

import importlib.resources
import json
import logging
import sys
import textwrap

import optuna
import pytest

from backend import BackendConfig
from backend.knobs import INDUCTOR, KNOBS, ONNXRUNTIME, OPENVINO, PATHS, TORCHSCRIPT, superseded
from autotune.errors import AutotuneError, SpaceError
from autotune.space import IntRange, load_space, shipped_spaces
from tuning import assert_file_line_error

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALL_FEATURES = frozenset({"avx2", "avx512f", "mkldnn_bf16"})


def write(tmp_path, text, name="space.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def space_from(tmp_path, knobs_yaml):
    return load_space(write(tmp_path, "knobs:\n" + textwrap.indent(textwrap.dedent(knobs_yaml), "  ")))


def sample(space, n, sampler=None):
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    results = []
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial)
        results.append((config, dict(trial.params)))
        study.tell(trial, float(len(results)))
    return results


# --- shipped files ------------------------------------------------------------------------------

def test_shipped_spaces_load_from_the_installed_package():
    assert {"default", "quick"} <= set(shipped_spaces())
    space = load_space("default")
    shipped = importlib.resources.files("search_spaces") / "default.yaml"
    assert space.source == str(shipped)
    assert set(space.knobs) == {
        "path", "weights_prepack", "channels_last", "optimize_for_inference", "onednn_fusion",
        "conv_bn_folding", "freezing", "max_autotune", "epilogue_fusion", "pattern_matcher",
        "simdlen", "tiling_heuristics", "min_chunk_size", "cpp_wrapper", "gemm_max_k_slices",
        "threads", "ort_optimization_level", "ov_int8_preset", "ov_int8_model_type",
        "pt2e_int8_activations"}
    assert space.knobs["freezing"] == (True, False)
    assert "gemm_backends" not in space.knobs  # CPP alone fails on models with bmm
    assert load_space("quick").knobs["path"] == (TORCHSCRIPT, INDUCTOR)


def test_default_yaml_has_one_comment_per_knob():
    text = (importlib.resources.files("search_spaces") / "default.yaml").read_text()
    lines = text.splitlines()
    knob_lines = [i for i, line in enumerate(lines) if line.startswith("  ") and not
                  line.strip().startswith("#") and ":" in line]
    assert len(knob_lines) == len(load_space("default").knobs)
    assert all(lines[i - 1].strip().startswith("#") for i in knob_lines)


def test_to_dict_is_json_friendly():
    data = load_space("default").restrict(features=ALL_FEATURES, cores=4).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["knobs"]["threads"] == {"low": 1, "high": 4, "log": False}


# --- errors name the file and line --------------------------------------------------------------

@pytest.mark.parametrize("text,line,pieces", [
    ("knobs:\n  path: [torchscript\n  simdlen: [auto]\n", 3, ["malformed YAML"]),
    ("knobs:\n  path: [torchscript]\n  simdlenn: [auto]\n", 3,
     ["unknown knob 'simdlenn'", "did you mean simdlen", "Valid knobs: path"]),
    ("knobs:\n  path: [torchscript, inductor]\n  simdlen:\n    - auto\n    - 1024\n", 5,
     ["knob 'simdlen': got 1024", "valid values: 'auto', '256', '512'"]),
    ("knobs:\n  path: [inductor]\n  freezing: {low: 0, high: 1}\n", 3,
     ["knob 'freezing' takes a list of values (True, False), not a range", "threads"]),
    ("knobs:\n  path: [inductor]\n  max_autotune: []\n", 3,
     ["knob 'max_autotune': empty list", "True, False"]),
    ("knobs:\n  path: [inductor]\n  threads: 4\n", 3,
     ["knob 'threads': got 4", "expected a list of values", "{low, high, log}"]),
    ("knobs:\n  path: [inductor]\n  threads: {low: 1, high: 2000}\n", 3,
     ["knob 'threads': got 2000", "an integer from 0 to 1024"]),
    ("knobs:\n  path: [inductor]\n  threads: {low: 8, high: 2}\n", 3, ["low 8 > high 2"]),
    ("knobs:\n  path: [inductor]\n  threads: {low: 0, high: 8, log: true}\n", 3,
     ["log range needs low >= 1"]),
    ("knobs:\n  path: [inductor]\n  threads: {low: 1, hi: 8}\n", 3,
     ["unknown key 'hi'", "valid keys: low, high, log"]),
    ("knobs:\n  path: [inductor]\n  dtype: [float32]\n", 3, ["dtype is not part of a search space"]),
    ("knobs:\n  simdlen: [auto]\n", 1, ["`path` must be listed"]),
    ("knobs:\n  path: [torchscript]\n  freezing: [true]\n", 3,
     ["'freezing' applies only to path inductor", "`path` does not list"]),
    ("knobs:\n  path: [inductor]\n  path: [torchscript]\n", 3, ["'path' appears twice"]),
    ("description: x\nknob:\n  path: [inductor]\n", 2,
     ["unknown key 'knob'", "valid keys: knobs, description"]),
    ("- path\n", 1, ["expected a mapping with `knobs:`"]),
])
def test_space_errors_name_file_line_and_valid_values(tmp_path, text, line, pieces):
    assert_file_line_error(SpaceError, load_space, write(tmp_path, text, "bad.yaml"), line, pieces)


def test_empty_file_and_unknown_names(tmp_path):
    with pytest.raises(SpaceError, match=r"empty\.yaml: expected a mapping"):
        load_space(write(tmp_path, "", "empty.yaml"))
    with pytest.raises(SpaceError, match=r"unknown search space 'defualt'; shipped spaces: default"):
        load_space("defualt")
    with pytest.raises(SpaceError, match=r"search space file '.*missing\.yaml' not found"):
        load_space(tmp_path / "missing.yaml")
    assert issubclass(SpaceError, AutotuneError)


def test_values_are_coerced_and_deduplicated(tmp_path):
    space = space_from(tmp_path, """
        path: [inductor]
        simdlen: [auto, 512, "512"]
        min_chunk_size: ["64", 64]
        threads: {low: 2, high: 2}
    """)
    assert space.knobs["simdlen"] == ("auto", 512)
    assert space.knobs["min_chunk_size"] == (64,)
    assert space.knobs["threads"] == (2,)


# --- restricting to this host -------------------------------------------------------------------

def test_restrict_drops_unsupported_values_with_one_line_per_knob(tmp_path, caplog):
    space = space_from(tmp_path, """
        path: [torchscript, inductor]
        simdlen: [auto, "256", "512"]
    """)
    with caplog.at_level(logging.INFO, logger="autotune.space"):
        restricted = space.restrict(features=frozenset(), cores=4,
                                    dtypes=["float32", "bfloat16"])
    assert restricted.knobs["simdlen"] == ("auto",)
    assert restricted.dtypes == ("float32",)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["search space: dropped dtype=bfloat16 (needs mkldnn_bf16)",
                        "search space: dropped simdlen=256/512 (needs avx2, avx512f)"]
    assert space.knobs["simdlen"] == ("auto", 256, 512)  # the original is untouched


def test_restrict_keeps_supported_values_silently(tmp_path, caplog):
    space = space_from(tmp_path, "path: [inductor]\nsimdlen: [auto, '256', '512']\n")
    with caplog.at_level(logging.INFO, logger="autotune.space"):
        restricted = space.restrict(features=ALL_FEATURES, cores=2,
                                    dtypes=["float32", "bfloat16"])
    assert restricted.knobs["simdlen"] == ("auto", 256, 512)
    assert restricted.dtypes == ("float32", "bfloat16")
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


def test_knob_with_no_supported_value_stays_at_default(tmp_path, caplog):
    space = space_from(tmp_path, "path: [inductor]\nsimdlen: ['512']\n")
    with caplog.at_level(logging.INFO, logger="autotune.space"):
        restricted = space.restrict(features={"avx2"}, cores=2)
    assert "simdlen" not in restricted.knobs
    assert "simdlen stays at its default 'auto'" in caplog.text


def test_restrict_rejects_bad_or_impossible_dtypes(tmp_path):
    space = space_from(tmp_path, "path: [inductor]\n")
    with pytest.raises(SpaceError, match=r"'float16'.*valid values: 'float32', 'bfloat16'"):
        space.restrict(features=ALL_FEATURES, cores=2, dtypes=["float16"])
    with pytest.raises(SpaceError, match=r"bfloat16: none runs on this CPU.*valid here: float32"):
        space.restrict(features=frozenset(), cores=2, dtypes=["bfloat16"])


@pytest.mark.parametrize("threads_yaml,cores,expected", [
    ("{low: 1, high: 1024}", 4, IntRange(1, 4)),
    ("{low: 0, high: 64}", 8, IntRange(1, 8)),  # 0 means "leave alone": no candidate
    ("{low: 2, high: 64, log: true}", 8, IntRange(2, 8, True)),
    ("{low: 8, high: 16}", 2, (2,)),
    ("[0, 1, 4, 8]", 4, (1, 4)),
    ("[16, 32]", 4, (4,)),
    (None, 6, (6,)),  # not searched: fixed to all usable cores
])
def test_threads_are_clipped_to_usable_cores(tmp_path, threads_yaml, cores, expected):
    knobs = "path: [torchscript]\n" + (f"threads: {threads_yaml}\n" if threads_yaml else "")
    restricted = space_from(tmp_path, knobs).restrict(features=ALL_FEATURES, cores=cores)
    assert restricted.knobs["threads"] == expected


def test_gemm_thread_factors_that_match_no_thread_count_are_dropped(tmp_path, caplog):
    space = space_from(tmp_path, """
        path: [inductor]
        gemm_thread_factors: [auto, "1,1,2", "2,1,1", "1,1,4", "2,2,1"]
        threads: {low: 1, high: 64}
    """)
    with caplog.at_level(logging.INFO, logger="autotune.space"):
        restricted = space.restrict(features=ALL_FEATURES, cores=2)
    assert restricted.knobs["gemm_thread_factors"] == ("auto", (1, 1, 2), (2, 1, 1))
    assert "dropped gemm_thread_factors=1,1,4/2,2,1 (uses a thread count no threads value" in caplog.text


# --- sampling ------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # group=True
def test_suggest_samples_only_the_knobs_of_the_chosen_path():
    space = load_space("default").restrict(cores=4, dtypes=["float32"])
    sampler = optuna.samplers.TPESampler(multivariate=True, group=True, seed=0,
                                         n_startup_trials=5)
    results = sample(space, 30, sampler)
    assert {config["path"] for config, _ in results} == set(PATHS)
    for config, params in results:
        BackendConfig(config)  # accepted as is, on this CPU
        assert "dtype" not in params  # one dtype: not sampled
        # ONNX Runtime computes in float32 and takes no dtype
        assert config.get("dtype") == (None if config["path"] == ONNXRUNTIME else "float32")
        assert 1 <= config["threads"] <= 4
        assert all(config["path"] in KNOBS[name].paths for name in {*config, *params})


def test_knobs_superseded_by_onednn_fusion_are_not_sampled_and_stay_at_their_default(tmp_path):
    space = space_from(tmp_path, """
        path: [torchscript]
        weights_prepack: [false, true]
        optimize_for_inference: [true, false]
        onednn_fusion: [false, true]
    """).restrict(features=ALL_FEATURES, cores=2)
    results = sample(space, 40)
    assert {config["onednn_fusion"] for config, _ in results} == {True, False}
    for config, params in results:
        if config["onednn_fusion"]:
            # the compile ignores them: one canonical config, so the tuner sees duplicates
            assert "weights_prepack" not in params and "optimize_for_inference" not in params
            assert config["weights_prepack"] is True and config["optimize_for_inference"] is False
        else:
            assert {"weights_prepack", "optimize_for_inference"} <= set(params)
    fusion = next(config for config, _ in results if config["onednn_fusion"])
    assert set(space.params_for(fusion)) == {"onednn_fusion"}
    # a recipe that sets a superseded knob completes to the canonical config
    recipe = space._complete({"path": TORCHSCRIPT, "dtype": "float32", "onednn_fusion": True,
                              "weights_prepack": False})
    assert recipe == fusion


def test_superseding_follows_the_path_and_counts_a_left_out_knob_at_its_default():
    ruled = {"weights_prepack", "optimize_for_inference"}
    assert superseded({"path": TORCHSCRIPT}) == ruled  # onednn_fusion is on by default
    assert superseded({"path": TORCHSCRIPT, "onednn_fusion": False}) == set()
    assert superseded({"path": INDUCTOR}) == set()  # oneDNN Graph is a TorchScript knob
    assert superseded({"path": INDUCTOR, "onednn_fusion": True}) == set()


def test_int8_on_inductor_does_not_sample_freezing_which_its_compile_ignores(tmp_path):
    space = space_from(tmp_path, """
        path: [inductor]
        freezing: [true, false]
    """).restrict(features=ALL_FEATURES, cores=2, dtypes=("float32", "int8"))
    results = sample(space, 40)
    int8 = [(config, params) for config, params in results if config["dtype"] == "int8"]
    float32 = [config for config, _ in results if config["dtype"] == "float32"]
    assert int8 and {config["freezing"] for config in float32} == {True, False}
    for config, params in int8:  # one canonical config: the tuner sees the duplicates
        assert config["freezing"] is True and "freezing" not in params
    assert superseded({"path": INDUCTOR, "dtype": "int8"}) == {"freezing"}
    assert superseded({"path": OPENVINO, "dtype": "int8"}) == set()  # no such knob there


def test_a_space_without_onednn_fusion_says_which_knobs_it_cannot_search_there(tmp_path, caplog):
    space = space_from(tmp_path, """
        path: [torchscript, inductor]
        weights_prepack: [false, true]
    """)
    with caplog.at_level(logging.INFO, logger="autotune.space"):
        space = space.restrict(features=ALL_FEATURES, cores=2)
    assert [r.getMessage() for r in caplog.records] == [
        "search space: weights_prepack not searched on the torchscript path: onednn_fusion is on "
        "there (its default, not listed) and overrides them; list onednn_fusion: [true, false] "
        "to search them"]
    prepack_by_path = {}
    for config, params in sample(space, 30):
        prepack_by_path.setdefault(config["path"], set()).add(config["weights_prepack"])
        assert ("weights_prepack" in params) == (config["path"] == INDUCTOR)
    assert prepack_by_path == {TORCHSCRIPT: {True}, INDUCTOR: {True, False}}


def test_dtype_is_sampled_when_several_are_allowed(tmp_path):
    space = space_from(tmp_path, "path: [torchscript]\n").restrict(
        features=ALL_FEATURES, cores=2, dtypes=["float32", "bfloat16"])
    dtypes = {params["dtype"] for _, params in sample(space, 12)}
    assert dtypes == {"float32", "bfloat16"}


def test_mismatched_gemm_thread_factors_fall_back_to_auto(tmp_path):
    space = space_from(tmp_path, """
        path: [inductor]
        gemm_thread_factors: ["1,1,2", "1,2,1"]
        threads: [1, 2]
    """).restrict(features=ALL_FEATURES, cores=2)
    results = sample(space, 20)
    for config, params in results:
        if config["threads"] == 1:
            assert config["gemm_thread_factors"] == "auto"
        else:
            assert ",".join(map(str, config["gemm_thread_factors"])) == params["gemm_thread_factors"]
    assert {config["threads"] for config, _ in results} == {1, 2}


# --- warm start ----------------------------------------------------------------------------------

def test_static_recipes_are_valid_configs_inside_the_space():
    space = load_space("default").restrict(cores=3, dtypes=["float32", "bfloat16"])
    recipes = space.static_recipes()
    # ONNX Runtime's recipe once: it takes no dtype
    assert len(recipes) == 7 * len(space.dtypes) + 1
    for recipe in recipes:
        config = BackendConfig(recipe)  # checks CPU support too
        assert config.threads == 3 and config.dtype in space.dtypes
    non_default = [BackendConfig(r).non_default() for r in recipes
                   if r.get("dtype", "float32") == "float32"]
    assert {"path": OPENVINO, "threads": 3} in non_default
    assert {"path": ONNXRUNTIME, "threads": 3} in non_default
    assert {"path": TORCHSCRIPT, "threads": 3} in non_default
    assert {"path": INDUCTOR, "threads": 3} in non_default
    assert {"path": INDUCTOR, "max_autotune": True, "threads": 3} in non_default
    assert {"path": INDUCTOR, "cpp_wrapper": True, "threads": 3} in non_default
    assert {"path": TORCHSCRIPT, "onednn_fusion": False, "optimize_for_inference": True,
            "threads": 3} in non_default
    assert {"path": TORCHSCRIPT, "onednn_fusion": False, "threads": 3} in non_default


def test_static_recipes_outside_the_space_are_left_out(tmp_path):
    space = space_from(tmp_path, """
        path: [torchscript, inductor]
        optimize_for_inference: [false, true]
        channels_last: [false]
    """).restrict(features=ALL_FEATURES, cores=2)
    # channels_last=True (the default) is outside this space: no recipe fits
    assert space.static_recipes() == []
    space = space_from(tmp_path, "path: [inductor]\n").restrict(features=ALL_FEATURES, cores=2)
    # max_autotune is not searched, so only the Inductor default remains
    assert space.static_recipes() == [{"path": INDUCTOR, "dtype": "float32", "threads": 2}]
    assert space.static_recipes(dtypes=["bfloat16"]) == []  # not an allowed dtype


@pytest.mark.parametrize("dtypes", [["float32"], ["float32", "bfloat16"]])
def test_enqueued_recipes_come_back_from_suggest(dtypes):
    space = load_space("default").restrict(features=ALL_FEATURES, cores=2, dtypes=dtypes)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    recipes = space.static_recipes()
    for recipe in recipes:
        params = space.params_for(recipe)
        takes_dtype = recipe["path"] != ONNXRUNTIME
        assert "threads" in params and ("dtype" in params) == (len(dtypes) > 1 and takes_dtype)
        study.enqueue_trial(params, skip_if_exists=True)
    for recipe in recipes:
        trial = study.ask()
        assert space.suggest(trial) == recipe
        study.tell(trial, 1.0)


def test_an_engine_that_cannot_load_leaves_the_space_with_one_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    caplog.set_level(logging.INFO, logger="autotune.space")
    space = load_space("default").restrict(cores=2)
    assert OPENVINO not in space.knobs["path"] and ONNXRUNTIME in space.knobs["path"]
    said = [r.getMessage() for r in caplog.records if "path=openvino" in r.getMessage()]
    assert len(said) == 1 and "OpenVINO cannot load" in said[0], said
    assert not [r for r in space.static_recipes() if r["path"] == OPENVINO]


def test_int8_recipes_start_with_nncf_on_openvino_and_float32_with_the_backend_default_then_the_engines():
    space = load_space("default").restrict(features=ALL_FEATURES, cores=2, dtypes=("float32", "int8"))
    recipes = space.static_recipes()
    assert (recipes[0]["path"], recipes[0]["dtype"]) == (OPENVINO, "int8")
    # the dtypes take turns: when int8 fails the gate, a short budget still stores float32's default
    assert (recipes[1]["path"], recipes[1]["dtype"]) == (TORCHSCRIPT, "float32")
    assert [r.get("dtype", "float32") for r in recipes[:6]] == ["int8", "float32"] * 3
    float32 = [r["path"] for r in recipes if r.get("dtype", "float32") == "float32"]
    # the backend default, then each engine's latency setting, before the slower torch recipes
    assert float32[:3] == [TORCHSCRIPT, OPENVINO, ONNXRUNTIME]
