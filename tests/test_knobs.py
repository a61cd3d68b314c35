"""Knob declarations and config validation: errors name the bad value and what would be valid."""

import pytest

from backend import BackendConfig
from backend import fingerprint
from backend.errors import KnobError, UnsupportedOnThisCPU
from backend.knobs import INDUCTOR, KNOBS, TORCHSCRIPT

pytestmark = pytest.mark.parallel  # times nothing: runs beside other tests


def test_every_knob_is_fully_declared():
    for knob in KNOBS.values():
        assert knob.doc and knob.paths
        assert knob.validate(knob.default) == knob.default
        if knob.type is not bool:
            assert (knob.choices is None) != (knob.low is None), knob.name


def test_defaults_follow_upstream_torchscript_path():
    config = BackendConfig()
    assert config.path == TORCHSCRIPT
    assert config.dtype == "float32"
    assert "freezing" not in config  # Inductor-only knobs are not part of a TorchScript config


def test_unknown_knob_suggests_close_names():
    with pytest.raises(KnobError, match=r"unknown knob 'simdlenn'.*did you mean simdlen"):
        BackendConfig({"simdlenn": "512"})


@pytest.mark.parametrize("name,value,valid", [
    ("dtype", "float16", "'float32', 'bfloat16'"),
    ("path", "tvm", "'torchscript', 'inductor'"),
    ("threads", -1, "an integer from 0 to 1024"),
    ("weights_prepack", "maybe", "True, False"),
])
def test_bad_value_names_knob_and_valid_values(name, value, valid):
    with pytest.raises(KnobError) as err:
        BackendConfig({"path": INDUCTOR, name: value} if name != "path" else {name: value})
    assert repr(name) in str(err.value) and repr(value) in str(err.value) and valid in str(err.value)


def test_knob_of_other_path_is_refused():
    with pytest.raises(KnobError, match="'freezing' applies only to path inductor"):
        BackendConfig({"path": TORCHSCRIPT, "freezing": True})


def test_strings_from_yaml_or_cli_are_coerced():
    # 256-bit vectors: every x86-64 host these tests run on has AVX2
    config = BackendConfig({"path": "inductor", "simdlen": 256, "threads": "2", "freezing": "false"})
    assert (config.simdlen, config.threads, config.freezing) == (256, 2, False)


def test_config_identity_is_stable_and_ignores_spelling():
    a = BackendConfig({"path": "inductor", "threads": 2})
    b = BackendConfig({"threads": "2", "path": "inductor", "freezing": True})
    assert a == b and a.config_id == b.config_id and hash(a) == hash(b)
    assert a.config_id != BackendConfig({"path": "inductor"}).config_id
    assert BackendConfig.from_dict(a.to_dict()) == a


def test_replace_switches_path_and_drops_knobs_of_the_old_path():
    config = BackendConfig({"conv_bn_folding": False, "threads": 1})
    moved = config.replace(path=INDUCTOR)
    assert moved.path == INDUCTOR and moved.threads == 1 and "conv_bn_folding" not in moved


def test_cpu_feature_missing_is_refused(monkeypatch):
    # Whatever this machine has: a host without AVX-512 must refuse 512-bit vectors asked for.
    monkeypatch.setattr("backend.config.cpu_features", lambda: frozenset({"avx2", "fma"}))
    with pytest.raises(UnsupportedOnThisCPU, match=r"'simdlen'='512' needs CPU feature\(s\) avx512f.*'auto', '256'"):
        BackendConfig({"path": INDUCTOR, "simdlen": "512"})
    assert BackendConfig({"path": INDUCTOR, "simdlen": "256"}).simdlen == 256


def test_this_cpu_reports_its_features():
    features = fingerprint.cpu_features()
    flags = open("/proc/cpuinfo").read()
    assert ("avx512f" in features) == (" avx512f " in flags)
    assert fingerprint.hardware_key() == fingerprint.hardware_key()


def test_config_attributes_are_declared_for_every_knob_and_nothing_else():
    annotated = BackendConfig.__annotations__
    assert list(annotated) == list(KNOBS)
    config = BackendConfig({"path": INDUCTOR, "threads": 2})
    for name in KNOBS:  # a knob of the other path reads as its default
        assert getattr(config, name) == config.get(name, KNOBS[name].default)
    assert (config.path, config.threads, config.conv_bn_folding) == (INDUCTOR, 2, True)
    with pytest.raises(AttributeError):
        config.simdlenn  # noqa: B018 (a typo is no knob)


def test_values_have_their_real_types_and_a_plain_form():
    config = BackendConfig({"path": INDUCTOR, "threads": 2, "gemm_thread_factors": "1,1,2",
                            "simdlen": "256"})
    assert config.gemm_thread_factors == (1, 1, 2) and config.simdlen == 256
    plain = config.to_dict()
    assert plain["gemm_thread_factors"] == "1,1,2" and plain["simdlen"] == "256"
    assert BackendConfig(plain) == config
    assert BackendConfig({**plain, "gemm_thread_factors": [1, 1, 2]}) == config


def test_thread_factors_must_use_the_configs_thread_count():
    with pytest.raises(KnobError, match=r"'gemm_thread_factors'='1,1,2' uses 2 threads, but the "
                                        r"graph runs on 1"):
        BackendConfig({"path": INDUCTOR, "threads": 1, "gemm_thread_factors": "1,1,2"})
    # threads 0 means "whatever torch has when the graph runs": checked at compile time
    assert BackendConfig({"path": INDUCTOR, "gemm_thread_factors": "1,1,2"}).gemm_thread_factors == (1, 1, 2)


def test_every_inductor_key_set_comes_from_a_declared_landing():
    from backend.inductor import inductor_patches
    from backend.knobs import InductorOption

    declared = {landing.key for knob in KNOBS.values() for landing in knob.lands
                if isinstance(landing, InductorOption)}
    set_keys = inductor_patches(BackendConfig({"path": INDUCTOR, "threads": 2, "max_autotune": True}))
    assert set(set_keys) == declared
    # off by default: Inductor's own settings (and its environment variables) stay
    assert set(inductor_patches(BackendConfig({"path": INDUCTOR}))) == declared - {
        "cpp.threads", "max_autotune", "max_autotune_gemm_backends"}
    assert all(knob.lands for knob in KNOBS.values())


def test_readme_knob_table_is_the_declarations():
    from pathlib import Path

    from backend.knobs import markdown_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it with `autotune knobs --markdown`"
