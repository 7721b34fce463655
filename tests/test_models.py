"""Tests for timbred.models against a real-format Hugging Face cache built in tmp_path.

The cache follows huggingface_hub's layout (``models--org--name/{blobs,refs,snapshots}`` with
snapshot entries symlinked to blobs), so huggingface_hub's own ``scan_cache_dir`` and delete
strategy run unmodified. No test reaches the network: an autouse fixture points HF_ENDPOINT at
a closed local port.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.support import RawConnection, check_result, req
from timbred.errors import InvalidParams, ModelLoadFailed, ModelNotFound, NetworkUnavailable
from timbred.models import (
    CATALOGUE,
    PullProgress,
    estimate_memory,
    hub_cache_dir,
    list_installed,
    pull,
    remove,
    resolve,
)
from timbred.testing.daemon import running_daemon

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, connect fails at once
CONFIG = json.dumps({"model_type": "musicgen", "torch_dtype": "float32"}).encode()


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A valid safetensors file: an 8-byte header length, a JSON header, zeroed tensor data."""
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header: dict[str, object] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = itemsize[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


WEIGHTS = safetensors_bytes({"w": ("F32", [64, 16]), "steps": ("I64", [8])})


def add_snapshot(
    cache: Path,
    repo: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT,
    ref: str | None = "main",
    kind: str = "models",
) -> Path:
    """Lay a revision of ``repo`` out as huggingface_hub does; return the snapshot directory."""
    repo_dir = cache / f"{kind}--{repo.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        entry = snapshot / rel
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    if ref is not None:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


def musicgen_files(**extra: bytes) -> dict[str, bytes]:
    return {"config.json": CONFIG, "model.safetensors": WEIGHTS, "spiece.model": b"sp", **extra}


def blob_total(files: dict[str, bytes]) -> int:
    return sum(len(v) for v in {hashlib.sha256(v).hexdigest(): v for v in files.values()}.values())


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "hub"
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def hf_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Isolate every test: its own cache and HF_HOME, online mode, and no reachable Hub."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    yield


class FakeHub:
    """A minimal Hugging Face Hub over real HTTP on localhost: model info, HEAD and GET of files.

    Speaks just enough of the Hub's wire format (``/api/models/...`` JSON, ``X-Repo-Commit`` and
    ``ETag`` headers, ``X-Error-Code`` on 404) for huggingface_hub's unmodified client code.
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], gated: frozenset[str] = frozenset()
                 ) -> None:
        self.repos = repos
        self.gated = gated
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub.requests.append(f"GET {self.path}")
                hub.answer(self, body=True)

            def do_HEAD(self) -> None:
                hub.requests.append(f"HEAD {self.path}")
                hub.answer(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        if path.startswith("/api/models/"):
            repo = "/".join(path.removeprefix("/api/models/").split("/")[:2])
            if repo not in self.repos:
                return self.send(handler, 404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
            siblings = [
                {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                for name, data in self.repos[repo].items()
            ]
            info = {"id": repo, "sha": COMMIT, "siblings": siblings, "private": False}
            return self.send(handler, 200, json.dumps(info).encode(), {}, body)
        org, name, _resolve, _commit, *rest = path.lstrip("/").split("/")
        if f"{org}/{name}" in self.gated:  # as the Hub answers a gated file without a token
            return self.send(handler, 401, b"", {"X-Error-Code": "GatedRepo",
                                                 "X-Error-Message": "Access restricted"}, body)
        data = self.repos.get(f"{org}/{name}", {}).get("/".join(rest))
        if data is None:
            return self.send(handler, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        return self.send(handler, 200, data, headers, body)

    @staticmethod
    def send(
        handler: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str],
        body: bool,
    ) -> None:
        handler.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body:
            handler.wfile.write(data)


#: A diffusers Stable Audio layout as stabilityai/stable-audio-open-1.0 has it: one folder per
#: component, and the stable-audio-tools checkpoint at the root, which no pull should fetch.
PIPELINE_FILES = {
    "model_index.json": json.dumps({
        "_class_name": "StableAudioPipeline",
        "transformer": ["diffusers", "StableAudioDiTModel"],
        "scheduler": ["diffusers", "CosineDPMSolverMultistepScheduler"],
        "tokenizer": ["transformers", "T5TokenizerFast"]}).encode(),
    "transformer/config.json": b"{}",
    "transformer/diffusion_pytorch_model.safetensors": WEIGHTS,
    "scheduler/scheduler_config.json": b"{}",
    "tokenizer/tokenizer_config.json": b"{}",
    "tokenizer/spiece.model": b"sp",
    "model_config.json": b"{}",
    "model.safetensors": b"W" * 8192,
    "model.ckpt": b"C" * 8192,
    "README.md": b"# card",
}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    hub = FakeHub(
        {
            "facebook/musicgen-small": {
                **musicgen_files(),
                "tokenizer.json": b"{}",
                "pytorch_model.bin": b"B" * 4096,
                "state_dict.bin": b"S" * 4096,
                "README.md": b"# card",
            },
            "someone/bin-only": {"config.json": CONFIG, "pytorch_model.bin": b"B" * 64},
            "someone/sao-pipeline": PIPELINE_FILES,
            "someone/gated-pipeline": PIPELINE_FILES,
            # The Demucs bag as demucs 4.1 loads it from the hub (demucs/hf.py).
            "adefossez/HTDemucs": {"htdemucs.yaml": b"models: ['955717e8']\n",
                                   "955717e8.safetensors": WEIGHTS, "README.md": b"# card"},
        },
        gated=frozenset({"someone/gated-pipeline"}),
    )
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    yield hub
    hub.close()


class TestCatalogue:
    def test_entries_map_to_facebook_repos(self) -> None:
        """Every alias maps to facebook/<alias>, with melody/stereo flags read off the name."""
        musicgens = {n: e for n, e in CATALOGUE.items() if e.backend == "musicgen"}
        assert len(musicgens) == 10
        for name, entry in musicgens.items():
            assert entry.repo == f"facebook/{name}" and not entry.gated
            assert entry.licence == "CC-BY-NC-4.0"
            assert entry.melody == ("melody" in name)
            assert entry.stereo == ("stereo" in name)
            assert entry.approx_bytes == entry.approx_params * 4
        assert CATALOGUE["musicgen-stereo-melody-large"].lm_params == 3_300_000_000

    def test_stable_audio_open_is_listed_gated_with_its_licence(self) -> None:
        entry = CATALOGUE["stable-audio-open-1.0"]
        assert (entry.repo, entry.backend) == ("stabilityai/stable-audio-open-1.0",
                                               "stable-audio")
        assert entry.gated and entry.stereo and not entry.melody
        assert entry.licence == "Stability AI Community License"
        assert entry.approx_bytes == 1_323_000_000 * 4
        for name in ("stable-audio-3-medium", "stable-audio-3-medium-base"):
            sa3 = CATALOGUE[name]
            assert sa3.repo == f"stabilityai/{name}" and sa3.backend == "stable-audio"
            assert sa3.gated and "Gemma" in sa3.licence

    def test_ace_step_is_listed_open_under_mit(self) -> None:
        entry = CATALOGUE["ace-step-1.5-xl-turbo"]
        assert (entry.repo, entry.backend) == ("ACE-Step/acestep-v15-xl-turbo-diffusers",
                                               "ace-step")
        assert not entry.gated and entry.stereo and entry.licence == "MIT"


class TestResolve:
    def test_alias_not_downloaded(self, cache: Path) -> None:
        """An alias resolves to its hub repo even before a pull; nothing is local yet."""
        ref = resolve("musicgen-small")
        assert (ref.id, ref.kind, ref.repo) == ("musicgen-small", "hub", "facebook/musicgen-small")
        assert ref.revision is None and ref.local_path is None and not ref.ready
        assert ref.entry is CATALOGUE["musicgen-small"]

    def test_alias_is_case_insensitive(self, cache: Path) -> None:
        """Aliases match regardless of case and report the canonical spelling."""
        assert resolve("MusicGen-Small").id == "musicgen-small"

    def test_cached_alias_reports_commit_and_snapshot(self, cache: Path) -> None:
        """A cached model resolves to the commit refs/main points at and its snapshot dir."""
        snapshot = add_snapshot(cache, "facebook/musicgen-small", musicgen_files())
        ref = resolve("musicgen-small")
        assert ref.revision == COMMIT
        assert ref.local_path == snapshot
        assert ref.ready and ref.missing == ()

    def test_incomplete_snapshot_lists_missing_files(self, cache: Path) -> None:
        """A snapshot missing shards named by its index reports them in ``missing``."""
        index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
        add_snapshot(
            cache,
            "facebook/musicgen-large",
            {
                "config.json": CONFIG,
                "model.safetensors.index.json": index.encode(),
                "model-1.safetensors": WEIGHTS,
            },
        )
        ref = resolve("musicgen-large")
        assert ref.missing == ("model-2.safetensors",)
        assert not ref.ready

    def test_raw_repo_id(self, cache: Path) -> None:
        """A raw 'org/name' resolves to that repo; a catalogue repo keeps its entry."""
        ref = resolve("facebook/musicgen-stereo-small")
        assert ref.repo == "facebook/musicgen-stereo-small"
        assert ref.entry is CATALOGUE["musicgen-stereo-small"]
        other = resolve("someone/my-musicgen")
        assert (other.kind, other.repo, other.entry) == ("hub", "someone/my-musicgen", None)

    def test_explicit_revision(self, cache: Path) -> None:
        """A commit hash or branch name selects that cached snapshot."""
        add_snapshot(
            cache, "facebook/musicgen-small", musicgen_files(), commit=OLD_COMMIT, ref="v1"
        )
        add_snapshot(cache, "facebook/musicgen-small", musicgen_files())
        assert resolve("musicgen-small", revision="v1").revision == OLD_COMMIT
        assert resolve("musicgen-small", revision=OLD_COMMIT).revision == OLD_COMMIT
        assert resolve("musicgen-small").revision == COMMIT
        assert resolve("musicgen-small", revision="nope").local_path is None

    def test_local_directory_absolute_relative_and_home(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A directory with a MusicGen config.json resolves by absolute, relative or ~ path."""
        model_dir = tmp_path / "models" / "mine"
        model_dir.mkdir(parents=True)
        (model_dir / "config.json").write_bytes(CONFIG)
        (model_dir / "model.safetensors").write_bytes(WEIGHTS)

        ref = resolve(str(model_dir))
        assert (ref.kind, ref.id, ref.path, ref.local_path) == (
            "local",
            str(model_dir),
            model_dir,
            model_dir,
        )
        assert ref.repo is None and ref.ready

        monkeypatch.chdir(tmp_path / "models")
        assert resolve("mine").path == model_dir
        assert resolve("./mine").id == str(model_dir)

        monkeypatch.setenv("HOME", str(tmp_path))
        assert resolve("~/models/mine").path == model_dir

    def test_alias_wins_over_same_named_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bare alias means the catalogue model even if the cwd has a directory of that name."""
        (tmp_path / "musicgen-small").mkdir()
        monkeypatch.chdir(tmp_path)
        assert resolve("musicgen-small").kind == "hub"

    def test_directory_without_config(self, tmp_path: Path) -> None:
        """A directory lacking config.json is ModelNotFound naming the missing file."""
        (tmp_path / "empty").mkdir()
        with pytest.raises(ModelNotFound, match=r"config\.json"):
            resolve(str(tmp_path / "empty"))

    def test_directory_of_another_model_type(self, tmp_path: Path) -> None:
        """A config.json of a different model type is not taken for MusicGen."""
        (tmp_path / "bert").mkdir()
        (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
        with pytest.raises(ModelNotFound, match="not MusicGen"):
            resolve(str(tmp_path / "bert"))

    def test_unknown_name_suggests_close_alias(self, cache: Path) -> None:
        """A misspelt alias is ModelNotFound whose hint suggests the close name and how to pull."""
        with pytest.raises(ModelNotFound) as info:
            resolve("musicgen-smal")
        err = info.value
        assert "did you mean 'musicgen-small'" in err.data["hint"]
        assert "pull" in err.data["hint"]
        assert err.data["model"] == "musicgen-smal"
        assert err.data["kind"] == "model_not_found"

    def test_missing_path(self, tmp_path: Path) -> None:
        """A path-shaped name that is not a directory is ModelNotFound, not a Hub lookup."""
        with pytest.raises(ModelNotFound, match="no directory"):
            resolve(str(tmp_path / "absent"))

    def test_empty_name_and_bad_revision(self, cache: Path) -> None:
        """An empty name or a path-escaping revision is InvalidParams naming the parameter."""
        with pytest.raises(InvalidParams) as info:
            resolve("  ")
        assert info.value.data["param"] == "model"
        with pytest.raises(InvalidParams) as info:
            resolve("musicgen-small", revision="../../etc")
        assert info.value.data["param"] == "revision"


class TestListInstalled:
    def test_missing_cache_is_empty(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A cache directory that does not exist lists nothing rather than failing."""
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "never-created"))
        assert list_installed() == []

    def test_reports_alias_size_revision_and_path(self, cache: Path) -> None:
        """Each cached revision is listed with its alias, commit, refs, blob bytes and snapshot."""
        files = musicgen_files()
        snapshot = add_snapshot(cache, "facebook/musicgen-small", files)
        add_snapshot(cache, "someone/custom", musicgen_files(extra=b"x" * 100))
        add_snapshot(cache, "someone/a-dataset", {"data.csv": b"1,2"}, kind="datasets")
        before = time.time()

        models = list_installed()
        assert [m.name for m in models] == ["musicgen-small", "someone/custom"]
        small = models[0]
        assert small.kind == "hub" and small.repo == "facebook/musicgen-small"
        assert small.revision == COMMIT and small.refs == ("main",)
        assert small.path == snapshot
        assert small.size_bytes == blob_total(files)
        assert small.missing == ()
        assert 0 < small.last_modified <= before + 1
        assert models[1].size_bytes == blob_total(files) + 100

    def test_hf_home_is_honoured(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without HF_HUB_CACHE the cache is HF_HOME/hub, read at call time."""
        monkeypatch.delenv("HF_HUB_CACHE")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
        assert hub_cache_dir() == (tmp_path / "elsewhere" / "hub").resolve()
        add_snapshot(tmp_path / "elsewhere" / "hub", "facebook/musicgen-medium", musicgen_files())
        assert [m.name for m in list_installed()] == ["musicgen-medium"]

    def test_local_directories_are_listed(self, cache: Path, tmp_path: Path) -> None:
        """Explicitly passed model directories are listed with their size; invalid ones skipped."""
        model_dir = tmp_path / "mine"
        model_dir.mkdir()
        (model_dir / "config.json").write_bytes(CONFIG)
        (model_dir / "model.safetensors").write_bytes(WEIGHTS)
        (tmp_path / "not-a-model").mkdir()

        models = list_installed([model_dir, tmp_path / "not-a-model"])
        assert len(models) == 1
        local = models[0]
        assert (local.kind, local.name, local.path, local.repo) == (
            "local",
            str(model_dir),
            model_dir,
            None,
        )
        assert local.size_bytes == len(CONFIG) + len(WEIGHTS)


    def test_each_entry_names_its_family(self, cache: Path, tmp_path: Path) -> None:
        """Every entry says which family loads it (as resolve() would): the files' family,
        else the catalogue's, else None (a non-catalogue pull cut short before config.json)."""
        add_snapshot(cache, "facebook/musicgen-small", musicgen_files())
        add_snapshot(cache, "someone/partial", {"model.safetensors": WEIGHTS})
        model_dir = tmp_path / "mine"
        model_dir.mkdir()
        (model_dir / "config.json").write_bytes(CONFIG)
        families = {m.name: m.backend for m in list_installed([model_dir])}
        assert families == {"musicgen-small": "musicgen", "someone/partial": None,
                            str(model_dir): "musicgen"}


class TestOverTheSocket:
    """models.list and daemon.status say each model's family, as schemas/openrpc.json says."""

    pytestmark = pytest.mark.anyio

    @pytest.mark.parametrize(("default", "family"), [
        ("musicgen-small", "musicgen"),  # the catalogue says so before any download
        ("someone/not-pulled", None),
        ("./no/such/dir", None),  # unresolvable: status still answers
    ])
    async def test_installed_models_and_the_default_name_their_family(
            self, cache: Path, short_tmp: Path, default: str, family: str | None) -> None:
        add_snapshot(cache, "facebook/musicgen-small", musicgen_files())
        async with running_daemon(short_tmp, models__default=default) as d:
            conn = await RawConnection.open(d.socket_path)
            try:
                listing = check_result("models.list", await conn.call(req("models.list")))
                status = check_result("daemon.status", await conn.call(req("daemon.status")))
            finally:
                await conn.aclose()
        assert [(m["name"], m["backend"]) for m in listing["installed"]] == [
            ("musicgen-small", "musicgen")]
        assert status["default_model"] == {"name": default, "backend": family}


class TestRemove:
    def test_frees_bytes_and_files(self, cache: Path) -> None:
        """Removing a model deletes its repo folder and reports the blob bytes freed."""
        files = musicgen_files()
        add_snapshot(cache, "facebook/musicgen-small", files)
        partial = cache / "models--facebook--musicgen-small" / "blobs" / "abc.incomplete"
        partial.write_bytes(b"p" * 50)

        removed = remove("musicgen-small")
        assert removed.repo == "facebook/musicgen-small"
        assert removed.revisions == (COMMIT,)
        assert removed.bytes_freed == blob_total(files) + 50
        assert not (cache / "models--facebook--musicgen-small").exists()
        assert list_installed() == []

    def test_one_revision_keeps_shared_blobs(self, cache: Path) -> None:
        """Removing one revision frees only the blobs no other revision uses."""
        add_snapshot(
            cache, "facebook/musicgen-small", musicgen_files(), commit=OLD_COMMIT, ref="v1"
        )
        newer = musicgen_files(**{"model.safetensors": WEIGHTS + b"\0" * 8})
        add_snapshot(cache, "facebook/musicgen-small", newer)

        removed = remove("musicgen-small", revision="v1")
        assert removed.revisions == (OLD_COMMIT,)
        assert removed.bytes_freed == len(WEIGHTS)
        assert [m.revision for m in list_installed()] == [COMMIT]
        assert resolve("musicgen-small").ready

    def test_not_installed(self, cache: Path) -> None:
        """Removing a model that is not cached is ModelNotFound."""
        with pytest.raises(ModelNotFound, match="not installed"):
            remove("musicgen-large")

    def test_local_directory_is_never_deleted(self, tmp_path: Path) -> None:
        """A local directory is refused with InvalidParams and left in place."""
        model_dir = tmp_path / "mine"
        model_dir.mkdir()
        (model_dir / "config.json").write_bytes(CONFIG)
        with pytest.raises(InvalidParams):
            remove(str(model_dir))
        assert (model_dir / "config.json").exists()


class TestPull:
    def test_cached_model_offline_returns_without_network(
        self, cache: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under HF_HUB_OFFLINE=1 a fully cached model is returned, with a final 'done' report."""
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        files = musicgen_files()
        snapshot = add_snapshot(cache, "facebook/musicgen-small", files)
        reports: list[PullProgress] = []

        installed = pull("musicgen-small", progress=reports.append)
        assert installed.path == snapshot and installed.revision == COMMIT
        assert reports[-1].phase == "done"
        assert reports[-1].bytes_done == reports[-1].bytes_total == blob_total(files)

    def test_uncached_model_offline(self, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Under HF_HUB_OFFLINE=1 an uncached model is NetworkUnavailable explaining offline use:
        the way forward first, and no advice to set the flag that is already set."""
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(NetworkUnavailable) as info:
            pull("musicgen-small")
        message = str(info.value)
        assert message.startswith("to work offline, put musicgen-small in the Hugging Face cache")
        assert "HF_HUB_OFFLINE is set" in message and "set HF_HUB_OFFLINE=1" not in message
        assert info.value.data["model"] == "musicgen-small"

    def test_incomplete_cache_offline_names_missing_file(
        self, cache: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Offline, a cached copy without its weights is NetworkUnavailable naming what lacks."""
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        add_snapshot(cache, "facebook/musicgen-small", {"config.json": CONFIG})
        with pytest.raises(NetworkUnavailable, match=r"lacks model\.safetensors"):
            pull("musicgen-small")

    def test_unreachable_hub_fails_fast(self, cache: Path) -> None:
        """With no offline flag but no Hub answering, pull is NetworkUnavailable within seconds."""
        start = time.monotonic()
        with pytest.raises(NetworkUnavailable, match="cannot reach") as info:
            pull("musicgen-small", timeout=2.0)
        assert time.monotonic() - start < 5
        assert "127.0.0.1:9" in str(info.value)
        assert str(info.value).startswith("to work offline")
        assert "set HF_HUB_OFFLINE=1" in str(info.value)

    def test_refresh_falls_back_to_cache_when_unreachable(self, cache: Path) -> None:
        """A refresh that cannot reach the Hub returns the complete cached copy instead."""
        snapshot = add_snapshot(cache, "facebook/musicgen-small", musicgen_files())
        installed = pull("musicgen-small", refresh=True, timeout=2.0)
        assert installed.path == snapshot

    def test_download_from_hub(
        self, cache: Path, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A pull fetches only the files MusicGen needs, reports progress and records refs/main."""
        monkeypatch.setattr("timbred.models._PROGRESS_INTERVAL_S", 0.0)  # report every chunk
        reports: list[PullProgress] = []
        installed = pull("musicgen-small", progress=reports.append)

        assert installed.revision == COMMIT and installed.refs == ("main",)
        assert installed.missing == ()
        names = sorted(p.name for p in installed.path.iterdir())
        assert names == ["config.json", "model.safetensors", "spiece.model", "tokenizer.json"]
        assert (installed.path / "model.safetensors").read_bytes() == WEIGHTS

        total = len(CONFIG) + len(WEIGHTS) + len(b"sp") + len(b"{}")
        last = reports[-1]
        assert (last.phase, last.files_done, last.files_total) == ("done", 4, 4)
        assert last.bytes_done == last.bytes_total == total
        done = [r.bytes_done for r in reports]
        assert done == sorted(done)
        # Bytes arrive through huggingface_hub's progress hook before the file is counted done.
        start = next(r for r in reports if r.file == "model.safetensors")
        assert any(
            r.file == "model.safetensors"
            and r.files_done == start.files_done
            and r.bytes_done == start.bytes_done + len(WEIGHTS)
            for r in reports
        )
        assert resolve("musicgen-small").ready

    def test_second_pull_needs_no_request(self, cache: Path, fake_hub: FakeHub) -> None:
        """Once everything is cached, pulling again sends nothing to the Hub."""
        pull("musicgen-small")
        count = len(fake_hub.requests)
        pull("musicgen-small")
        assert len(fake_hub.requests) == count

    def test_bin_weights_only_without_safetensors(self, cache: Path, fake_hub: FakeHub) -> None:
        """A repo without safetensors gets its pytorch_model.bin instead."""
        installed = pull("someone/bin-only")
        assert sorted(p.name for p in installed.path.iterdir()) == [
            "config.json",
            "pytorch_model.bin",
        ]

    def test_a_diffusers_pipeline_gets_its_component_folders_only(
            self, cache: Path, fake_hub: FakeHub) -> None:
        """The root's stable-audio-tools checkpoint stays on the Hub; the pipeline is whole."""
        installed = pull("someone/sao-pipeline")
        files = sorted(str(p.relative_to(installed.path)) for p in installed.path.rglob("*")
                       if p.is_file())
        assert files == ["model_config.json", "model_index.json", "scheduler/scheduler_config.json",
                         "tokenizer/spiece.model", "tokenizer/tokenizer_config.json",
                         "transformer/config.json",
                         "transformer/diffusion_pytorch_model.safetensors"]
        ref = resolve("someone/sao-pipeline")
        assert ref.backend == "stable-audio" and ref.ready

    def test_the_stem_separator_is_pulled_like_any_model(
            self, cache: Path, fake_hub: FakeHub) -> None:
        """models pull htdemucs: its bag file and weights, recognised as a separator."""
        installed = pull("htdemucs")
        assert sorted(p.name for p in installed.path.iterdir()) == [
            "955717e8.safetensors", "htdemucs.yaml"]
        assert installed.backend == "demucs" and installed.missing == ()
        ref = resolve("htdemucs")
        assert ref.backend == "demucs" and ref.ready and ref.repo == "adefossez/HTDemucs"

    def test_a_gated_model_says_what_to_do(self, cache: Path, fake_hub: FakeHub) -> None:
        with pytest.raises(ModelNotFound) as caught:
            pull("someone/gated-pipeline")
        message = str(caught.value)
        assert f"accept its licence at {fake_hub.url}/someone/gated-pipeline" in message
        assert "`hf auth login`" in message and "HF_TOKEN" in message

    def test_unknown_repo_on_hub(self, cache: Path, fake_hub: FakeHub) -> None:
        """A repo id the Hub does not know is ModelNotFound, not a network error."""
        with pytest.raises(ModelNotFound, match="no repository"):
            pull("someone/absent")

    def test_unknown_name(self, cache: Path) -> None:
        """Pulling a name that is neither alias, repo id nor directory is ModelNotFound."""
        with pytest.raises(ModelNotFound):
            pull("musicgen-tiny")

    def test_local_directory_is_returned_as_is(self, tmp_path: Path) -> None:
        """Pulling a local directory needs no download and returns it."""
        model_dir = tmp_path / "mine"
        model_dir.mkdir()
        (model_dir / "config.json").write_bytes(CONFIG)
        (model_dir / "model.safetensors").write_bytes(WEIGHTS)
        assert pull(str(model_dir)).kind == "local"


class TestEstimateMemory:
    def test_sum_of_safetensors_sizes(self, cache: Path) -> None:
        """Without a dtype the estimate is the total size of the safetensors shards."""
        shard2 = safetensors_bytes({"v": ("F32", [32])})
        index = json.dumps({"weight_map": {"w": "m-1.safetensors", "v": "m-2.safetensors"}})
        add_snapshot(
            cache,
            "facebook/musicgen-medium",
            {
                "config.json": CONFIG,
                "model.safetensors.index.json": index.encode(),
                "m-1.safetensors": WEIGHTS,
                "m-2.safetensors": shard2,
            },
        )
        assert estimate_memory(resolve("musicgen-medium")) == len(WEIGHTS) + len(shard2)

    def test_dtype_scales_floating_tensors_only(self, cache: Path) -> None:
        """With float16, float tensors count 2 bytes per element; integer tensors keep theirs."""
        add_snapshot(cache, "facebook/musicgen-small", musicgen_files())
        ref = resolve("musicgen-small")
        assert estimate_memory(ref, dtype="float16") == 64 * 16 * 2 + 8 * 8
        assert estimate_memory(ref, dtype="float32") == 64 * 16 * 4 + 8 * 8

    def test_catalogue_model_not_pulled(self, cache: Path) -> None:
        """A catalogue model not yet pulled is estimated from its approximate parameter count."""
        entry = CATALOGUE["musicgen-large"]
        assert estimate_memory(resolve("musicgen-large")) == entry.approx_params * 4
        assert estimate_memory(resolve("musicgen-large"), dtype="bfloat16") == (
            entry.approx_params * 2
        )

    def test_unknown_repo_not_pulled(self, cache: Path) -> None:
        """A non-catalogue repo that is not cached has no size to estimate: ModelNotFound."""
        with pytest.raises(ModelNotFound):
            estimate_memory(resolve("someone/custom"))

    def test_no_weights_or_corrupt_header(self, tmp_path: Path) -> None:
        """No weight files, or a corrupt safetensors header read for a dtype, is ModelLoadFailed."""
        model_dir = tmp_path / "mine"
        model_dir.mkdir()
        (model_dir / "config.json").write_bytes(CONFIG)
        with pytest.raises(ModelLoadFailed, match="no weights"):
            estimate_memory(resolve(str(model_dir)))
        (model_dir / "model.safetensors").write_bytes(struct.pack("<Q", 10) + b"not json!!")
        with pytest.raises(ModelLoadFailed, match="not a valid safetensors"):
            estimate_memory(resolve(str(model_dir)), dtype="float16")
