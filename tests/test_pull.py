"""``steerling-lite pull`` / ``list`` and ``--model NAME`` resolution, without a network.

Nothing is downloaded: the network cases run offline (``HF_HUB_OFFLINE=1``) or against a
closed port on 127.0.0.1; the file filtering, the labels and the registry run against a
stand-in for ``snapshot_download`` / ``hf_hub_download`` that picks files with
huggingface_hub's own pattern matcher and writes the Hugging Face cache layout
(``models--owner--name/{refs,blobs,snapshots}``) in a temp dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steerling_lite import ConfigError
from steerling_lite.cli import main
from steerling_lite.loading.hub import HubError, RepoRef, parse_repo_ref, pull, read_registry, resolve_model


@pytest.mark.parametrize("text,ref", [
    ("guidelabs/steerling-8b", RepoRef("guidelabs/steerling-8b")),
    ("https://huggingface.co/guidelabs/steerling-8b", RepoRef("guidelabs/steerling-8b")),
    ("huggingface.co/guidelabs/steerling-8b-instruct/tree/v1.0", RepoRef("guidelabs/steerling-8b-instruct", "v1.0")),
    ("https://hf.co/guidelabs/steerling-8b/resolve/main/config.json", RepoRef("guidelabs/steerling-8b", "main")),
    ("http://127.0.0.1:9/guidelabs/steerling-8b", RepoRef("guidelabs/steerling-8b", None, "http://127.0.0.1:9")),
])
def test_repo_ids_and_urls(text, ref):
    assert parse_repo_ref(text) == ref


@pytest.mark.parametrize("text", ["steerling-8b", "https://huggingface.co/datasets/guidelabs/x", "a/b/c d"])
def test_not_a_repo(text):
    with pytest.raises(HubError, match="expected a model repo id"):
        parse_repo_ref(text)


def test_pull_offline_says_so_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"),
           "STEERLING_LITE_HOME": str(tmp_path / "home"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    proc = subprocess.run([sys.executable, "-m", "steerling_lite", "pull", "guidelabs/steerling-8b"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: cannot pull guidelabs/steerling-8b: HF_HUB_OFFLINE is set")
    assert "--model DIR" in proc.stderr


def test_pull_from_an_unreachable_hub_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLING_LITE_HOME", str(tmp_path / "home"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HubError, match=rf"http://127.0.0.1:{port} is not reachable .*--model DIR"):
        pull(f"http://127.0.0.1:{port}/guidelabs/steerling-8b", cache_dir=tmp_path / "hf")
    assert read_registry() == {}


# ---------------------------------------------------------------------------------------
# a stand-in Hub


class FakeHub:
    """``snapshot_download`` / ``hf_hub_download`` over in-memory repos, writing the real cache layout."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.fetched: dict[str, list[str]] = {}

    def snapshot_download(self, repo_id, *, revision=None, cache_dir=None, local_dir=None, allow_patterns=None,
                          ignore_patterns=None, **_):
        from huggingface_hub.utils import filter_repo_objects

        names = list(filter_repo_objects(list(self.repos[repo_id]), allow_patterns=allow_patterns,
                                         ignore_patterns=ignore_patterns))
        self.fetched.setdefault(repo_id, []).extend(names)
        return str(self._write(repo_id, names, cache_dir, local_dir))

    def hf_hub_download(self, repo_id, filename, *, cache_dir=None, local_dir=None, **_):
        self.fetched.setdefault(repo_id, []).append(filename)
        return str(self._write(repo_id, [filename], cache_dir, local_dir) / filename)

    def _write(self, repo_id, names, cache_dir, local_dir) -> Path:
        from huggingface_hub import constants

        files = self.repos[repo_id]
        if local_dir is not None:
            out = Path(local_dir)
            out.mkdir(parents=True, exist_ok=True)
            for n in names:
                (out / n).write_bytes(files[n])
            return out
        root = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        snap = root / "snapshots" / commit
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "refs").mkdir(exist_ok=True)
        snap.mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(commit)
        for n in names:
            blob = root / "blobs" / hashlib.sha256(files[n]).hexdigest()
            blob.write_bytes(files[n])
            if not (snap / n).exists():
                os.symlink(os.path.relpath(blob, snap), snap / n)
        return snap


def _labels() -> bytes:
    table = pa.table({
        "concept_id": [0, 1, 2], "concept_name": ["ocean", "music", "anger"],
        "concept_description": ["the sea", "sounds", "a feeling"], "head": ["known"] * 3,
        "public_group_id": [1, 2, 3], "group_name": ["nature", "arts", "mood"], "is_steerable": [True] * 3,
        "is_tone": [False] * 3, "is_alignment": [False] * 3, "is_demographic": [False] * 3,
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


@pytest.fixture
def hub(tiny_ckpt, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    weights = {n: (tiny_ckpt / n).read_bytes() for n in ("config.json", "model.safetensors")}
    fake = FakeHub({
        "guidelabs/steerling-8b": {**weights, "modeling_steerling.py": b"import os", "README.md": b"# card",
                                   "tokenizer.json": b"{}", "sub/model.safetensors": b"x", "pytorch_model.bin": b"x"},
        "guidelabs/steerling": {"concept_labels.parquet": _labels(), "steerling/__init__.py": b""},
        "someone/other-steerling": dict(weights),
        "someone/llama": {"config.json": b'{"model_type": "llama"}', "model.safetensors": b""},
        "someone/broken": {"config.json": weights["config.json"], "model.safetensors.index.json":
                           json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}).encode()},
    })
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("STEERLING_LITE_HOME", str(tmp_path / "home"))  # a registry of this test's own
    return fake


def test_pull_takes_only_config_weights_and_labels_and_is_then_found_by_name(hub, capsys):
    assert main(["pull", "guidelabs/steerling-8b"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert sorted(hub.fetched["guidelabs/steerling-8b"]) == ["config.json", "model.safetensors"]  # never code
    assert hub.fetched["guidelabs/steerling"] == ["concept_labels.parquet"]
    assert sorted(p.name for p in path.iterdir()) == ["concept_labels.parquet", "config.json", "model.safetensors"]
    assert (path / "concept_labels.parquet").is_symlink()  # linked to its blob, not copied
    assert resolve_model("guidelabs/steerling-8b") == path
    assert read_registry()["guidelabs/steerling-8b"]["path"] == str(path.resolve())
    # every model command takes the name; the labels pulled with it are found
    assert main(["concepts", "show", "0", "--model", "guidelabs/steerling-8b", "--json", "--tokens", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "ocean"
    assert main(["generate", "--model", "guidelabs/steerling-8b", "--prompt", "Hi", "-n", "64", "--steps", "1",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generated_tokens"] == 64


def test_pull_into_a_local_dir(hub, tmp_path):
    out = tmp_path / "models" / "other"
    m = pull("someone/other-steerling", local_dir=out, labels_repo="guidelabs/steerling")
    assert m.path == out and m.labels == out / "concept_labels.parquet" and not m.labels.is_symlink()
    assert m.files == ("concept_labels.parquet", "config.json", "model.safetensors")
    assert resolve_model("someone/other-steerling") == out
    plain = pull("someone/other-steerling")  # not a guidelabs model: no labels unless asked for
    assert plain.labels is None and hub.fetched["guidelabs/steerling"] == ["concept_labels.parquet"]  # once
    assert resolve_model("someone/other-steerling") == plain.path  # the last pull wins


@pytest.mark.parametrize("repo,words", [
    ("someone/llama", "is not a Steerling checkpoint"),
    ("someone/broken", "incomplete (missing model-00001-of-00002.safetensors)"),
])
def test_pull_refuses_what_is_not_a_complete_steerling_checkpoint(hub, repo, words):
    with pytest.raises(HubError, match=words.replace("(", r"\(").replace(")", r"\)")):
        pull(repo)
    assert read_registry() == {}  # not recorded


def test_models_in_the_hf_cache_are_found_without_a_pull(hub, tmp_path):
    hub.snapshot_download("someone/other-steerling")  # as `hf download` would have left it
    assert read_registry() == {}
    assert resolve_model("someone/other-steerling").parent.name == "snapshots"


def test_an_unknown_name_says_how_to_get_it(hub, capsys):
    with pytest.raises(ConfigError, match="no model of that name has been pulled; run `steerling-lite pull a/b`"):
        resolve_model("a/b")
    assert main(["info", "--model", "nobody/nothing"]) == 2
    assert "steerling-lite pull nobody/nothing" in capsys.readouterr().err
    assert resolve_model("/no/such/dir") == Path("/no/such/dir")  # paths stay paths: the loader reports them


def test_list_shows_models_size_schema_kind_and_prequantized_copies(hub, tmp_path, make_ckpt, capsys):
    pull("guidelabs/steerling-8b")
    folder = tmp_path / "mine"
    shutil.copytree(make_ckpt(instruct=True, schema="native"), folder / "chat")
    assert main(["quantize", "--model", str(folder / "chat"), "--quant", "nf4", "--out", str(folder / "chat-nf4")]) == 0
    capsys.readouterr()
    assert main(["list", str(folder), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"guidelabs/steerling-8b", "chat", "chat-nf4", "steerling-lite-wordnet"} <= set(rows)
    hubrow = rows["guidelabs/steerling-8b"]
    assert hubrow["where"] == "pulled" and hubrow["kind"] == "base" and hubrow["schema"] == "flat"
    assert hubrow["labels"] is True and hubrow["size_bytes"] > 10_000_000
    chat = rows["chat"]
    assert chat["kind"] == "instruct" and chat["schema"] == "native" and chat["quant"] == "none"
    assert [c["quant"] for c in chat["prequantized_copies"]] == ["nf4"] and rows["chat-nf4"]["quant"] == "nf4"
    assert main(["list", str(folder)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:7] == ["NAME", "SIZE", "SCHEMA", "KIND", "QUANT", "PRE-QUANTIZED", "COPIES"]
    line = next(r for r in table if r.startswith("chat "))
    assert "instruct" in line and "native" in line and " nf4 " in line
