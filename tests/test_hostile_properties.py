"""Issue 13, property-based: random and mutated config.json, safetensors index, safetensors
headers and CLI argument values give a result or the project's own error (or argparse's usage
error), never another exception."""

from __future__ import annotations

import argparse
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerling_lite.cli.argtypes import device_arg, directory_arg, float_arg, int_arg, seed_arg
from steerling_lite.cli.common import size_arg
from steerling_lite.cli.index import span_arg
from steerling_lite.cli.serve import api_key_arg
from steerling_lite.cli.steering_args import _spec as steering_spec
from steerling_lite.errors import CheckpointError, ConfigError
from steerling_lite.loading.checkpoint import weight_files
from steerling_lite.loading.config import parse_config
from steerling_lite.loading.random_checkpoint import preset_config
from steerling_lite.loading.safetensors_header import check_header, file_header

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
BASE = preset_config("tiny").to_dict()


@SETTINGS
@given(key=st.sampled_from(sorted(BASE)), value=json_values)
def test_mutated_config_parses_or_raises_config_error(key, value):
    data = dict(BASE, **{key: value})
    try:
        cfg = parse_config(data)
    except ConfigError:
        return
    assert cfg.n_layers >= 1 and cfg.norm_eps > 0  # what was accepted is usable


@SETTINGS
@given(data=json_values)
def test_random_config_parses_or_raises_config_error(data):
    try:
        parse_config(data)
    except ConfigError:
        pass


@SETTINGS
@given(weight_map=json_values)
def test_random_index_is_read_or_raises_checkpoint_error(tmp_path, weight_map):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    try:
        files = weight_files(tmp_path)
    except CheckpointError:
        return
    assert all(f.is_file() for f in files)


tensor_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "BF16", "I8", "U8", "Q4", ""]) | json_values,
    "shape": st.lists(st.integers(-2, 6), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-4, 200), min_size=0, max_size=3) | json_values,
})


@SETTINGS
@given(header=st.dictionaries(st.text(max_size=6), tensor_entries | json_values, max_size=4),
       data_bytes=st.integers(0, 300))
def test_random_safetensors_header_checks_or_raises_value_error(header, data_bytes):
    try:
        check_header(header, data_bytes)
    except ValueError:
        return
    assert sum(h["data_offsets"][1] - h["data_offsets"][0] for h in header.values()) == data_bytes


@SETTINGS
@given(raw=st.binary(max_size=300), length=st.integers(0, 2**64 - 1) | st.none())
def test_random_safetensors_bytes_read_or_raise_checkpoint_error(tmp_path, raw, length):
    f = tmp_path / "model.safetensors"
    f.write_bytes((struct.pack("<Q", length) if length is not None else b"") + raw)
    try:
        file_header(f)
    except CheckpointError:
        pass


@pytest.mark.parametrize("parse", [int_arg(1), int_arg(0, 10), float_arg(0.0), float_arg(0.0, 1.0, lo_open=True),
                                   seed_arg, device_arg, directory_arg, size_arg, span_arg, api_key_arg,
                                   steering_spec("amplify"), steering_spec("intervene", True)])
@SETTINGS
@given(text=st.text(max_size=30) | st.integers().map(str) | st.floats().map(str))
def test_argument_types_accept_or_raise_argument_type_error(parse, text):
    try:
        parse(text)
    except argparse.ArgumentTypeError as exc:
        assert "\n" not in str(exc)
