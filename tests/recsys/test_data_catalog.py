"""The dataset catalog and its downloader, against a local HTTP server (never the internet).

The server runs on 127.0.0.1 in a background thread and serves files from
``tmp_path``; it honours ``Range: bytes=N-`` requests, and can be told to drop
the connection after some bytes or to ignore ranges, so resuming and its
fallbacks are tested without a network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import re
import threading
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from recsys.data import load_interactions_csv, load_lightgcn
from recsys.data.catalog import (
    CATALOG,
    FORMATS,
    SUMS_FILE,
    Dataset,
    MovieLensRatings,
    RemoteFile,
    cache_state,
    extract_zip,
    fetch,
    get_dataset,
    names,
)
from recsys.data.download import (
    DownloadError,
    cache_dir,
    download,
    mirror_base,
    mirror_url,
)
from recsys.errors import DataError


@dataclass
class Server:
    """Behaviour of the test server, changed by tests between requests."""

    root: Path
    url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    drop_after: int | None = None  # bytes of the body sent before the connection is dropped
    drops: int = 0  # how many of the next requests are dropped
    ignore_range: bool = False

    def put(self, path: str, data: bytes) -> str:
        """Serve ``data`` at ``path``; returns its URL."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"{self.url}/{path}"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``Server.root``, honouring ``Range: bytes=N-`` unless told otherwise."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        range_header = self.headers.get("Range")
        state.requests.append((self.path, range_header))
        path = state.root / urllib.parse.unquote(self.path.lstrip("/"))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, status = 0, 200
        if range_header and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.drops > 0 and state.drop_after is not None:
            state.drops -= 1
            self.wfile.write(body[: state.drop_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path: Path):
    state = Server(tmp_path / "served")
    state.root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = state  # type: ignore[attr-defined]
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch):
    """The user's own cache and mirror settings must not leak into the tests."""
    monkeypatch.delenv("EMBNAS_CACHE", raising=False)
    monkeypatch.delenv("EMBNAS_MIRROR", raising=False)


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _get(url: str, dest: Path, **kwargs) -> str:
    return download(url, dest, progress=False, timeout=5, **kwargs)


# --- download -----------------------------------------------------------------------------------


def test_fresh_download_is_verified_and_renamed(server: Server, tmp_path: Path):
    data = _payload()
    url = server.put("a.bin", data)
    dest = tmp_path / "a.bin"
    assert _get(url, dest, sha256=_sha(data)) == _sha(data)
    assert dest.read_bytes() == data
    assert not (tmp_path / "a.bin.part").exists()
    assert server.requests == [("/a.bin", None)]


def test_interrupted_download_resumes_with_a_range_request(server: Server, tmp_path: Path):
    data = _payload()
    url = server.put("a.bin", data)
    dest = tmp_path / "a.bin"
    server.drop_after, server.drops = 100_000, 1
    with pytest.raises(DownloadError, match="interrupted.*run the same command again"):
        _get(url, dest, sha256=_sha(data), retries=0)
    assert not dest.exists()
    assert (tmp_path / "a.bin.part").stat().st_size == 100_000
    _get(url, dest, sha256=_sha(data))
    assert server.requests[1] == ("/a.bin", "bytes=100000-")
    assert dest.read_bytes() == data
    assert not (tmp_path / "a.bin.part").exists()


def test_retries_resume_within_one_call(server: Server, tmp_path: Path):
    data = _payload()
    url = server.put("a.bin", data)
    server.drop_after, server.drops = 70_000, 2
    _get(url, tmp_path / "a.bin", sha256=_sha(data), retries=2)
    assert [r for _, r in server.requests] == [None, "bytes=70000-", "bytes=140000-"]
    assert (tmp_path / "a.bin").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path):
    data = _payload()
    url = server.put("a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(b"not the file's first bytes" * 100)
    server.ignore_range = True
    _get(url, tmp_path / "a.bin", sha256=_sha(data))
    assert server.requests == [("/a.bin", "bytes=2600-")]
    assert (tmp_path / "a.bin").read_bytes() == data


def test_a_complete_part_answered_416_is_finished(server: Server, tmp_path: Path):
    data = _payload(5_000)
    url = server.put("a.bin", data)
    (tmp_path / "a.bin.part").write_bytes(data)  # killed between the last byte and the rename
    assert _get(url, tmp_path / "a.bin", sha256=_sha(data)) == _sha(data)
    assert (tmp_path / "a.bin").read_bytes() == data


def test_wrong_hash_is_refused_and_leaves_nothing(server: Server, tmp_path: Path):
    data = _payload()
    url = server.put("a.bin", data)
    wrong = "0" * 64
    with pytest.raises(DownloadError) as info:
        _get(url, tmp_path / "a.bin", sha256=wrong)
    message = str(info.value)
    assert url in message and wrong in message and _sha(data) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_http_error_names_the_url(server: Server, tmp_path: Path):
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
        _get(f"{server.url}/missing.bin", tmp_path / "x", retries=0)


# --- cache, mirror ------------------------------------------------------------------------------


def test_cache_folder_and_mirror_come_from_arguments_then_environment(monkeypatch, tmp_path: Path):
    assert cache_dir() == Path("~/.cache/embnas").expanduser()
    monkeypatch.setenv("EMBNAS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cache_dir(tmp_path / "d") == tmp_path / "d"
    assert mirror_base() is None
    monkeypatch.setenv("EMBNAS_MIRROR", "http://mirror.example/data/")
    assert mirror_base() == "http://mirror.example/data"
    assert mirror_url(mirror_base(), "ml-100k/ml-100k.zip") == "http://mirror.example/data/ml-100k/ml-100k.zip"
    assert mirror_base(str(tmp_path)) == tmp_path.resolve().as_uri()
    with pytest.raises(DownloadError, match="mirror"):
        mirror_base("ftp-less nonsense")


def _toy(files: tuple[RemoteFile, ...], **kwargs) -> Dataset:
    return Dataset("toy", "a toy", "tests", files, **{"format": "lightgcn", **kwargs})


def test_unpinned_hash_is_recorded_and_a_tampered_download_refused(server: Server, tmp_path: Path):
    cache = tmp_path / "cache"
    good = b"0 1 2\n1 2\n"
    server.put("toy/train.txt", good)
    toy = _toy((RemoteFile("train.txt", "https://upstream.example/x/train.txt"),))
    got = fetch(toy, cache, mirror=server.url, progress=False, timeout=5)
    assert got.downloaded == ("train.txt",)
    assert (cache / "toy" / SUMS_FILE).read_text() == f"{_sha(good)}  train.txt\n"
    again = fetch(toy, cache, mirror=server.url, progress=False)
    assert again.downloaded == () and len(server.requests) == 1  # complete and verified: not fetched again
    server.put("toy/train.txt", b"0 1 2 3\n")
    with pytest.raises(DownloadError, match=f"expected {_sha(good)}.*recorded in .*SHA256SUMS"):
        fetch(toy, cache, mirror=server.url, force=True, progress=False, timeout=5)
    assert (cache / "toy" / "train.txt").read_bytes() == good  # the verified file survives
    assert not (cache / "toy" / "train.txt.part").exists()
    (cache / "toy" / "train.txt").unlink()
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(toy, cache, mirror=server.url, progress=False, timeout=5)


def test_local_folder_mirror(tmp_path: Path):
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "train.txt").write_bytes(b"0 1\n")
    toy = _toy((RemoteFile("train.txt", "https://upstream.example/train.txt", _sha(b"0 1\n")),))
    got = fetch(toy, tmp_path / "cache", mirror=str(mirror), progress=False)
    assert (got.folder / "train.txt").read_bytes() == b"0 1\n"
    assert cache_state(toy, tmp_path / "cache") == "yes"


# --- conversion ---------------------------------------------------------------------------------

_U_DATA = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n196\t302\t5\t881250950\n"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_ml_100k_zip_becomes_a_loadable_ratings_table(server: Server, tmp_path: Path):
    archive = _zip({"ml-100k/": b"", "ml-100k/u.data": _U_DATA, "ml-100k/u.user": b"1|24|M|technician|85711\n",
                    "ml-100k/u.item": b"1|Toy Story (1995)|...\n"})
    server.put("ml-100k/ml-100k.zip", archive)
    cache = tmp_path / "cache"
    got = fetch("ml-100k", cache, mirror=server.url, progress=False, timeout=5)
    assert got.data == cache / "ml-100k" / "ratings.tsv" and got.converted
    assert got.data.read_bytes() == b"user_id\titem_id\trating\ttimestamp\n" + _U_DATA
    assert (cache / "ml-100k" / "u.user").exists() and (cache / "ml-100k" / "u.item").exists()
    data = load_interactions_csv(got.data, user_col="user_id", item_col="item_id", rating_col="rating", split=(1.0, 0.0, 0.0))
    assert data.train.nnz == 4 and data.n_users == 3
    again = fetch("ml-100k", cache, mirror=server.url, progress=False)
    assert again.downloaded == () and not again.converted  # idempotent
    assert cache_state(get_dataset("ml-100k"), cache) == "yes"


def test_ml_1m_double_colon_ratings(server: Server, tmp_path: Path):
    ratings = b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413"
    server.put("ml-1m/ml-1m.zip", _zip({"ml-1m/ratings.dat": ratings, "ml-1m/users.dat": b"1::F::1::10::48067\n"}))
    got = fetch("ml-1m", tmp_path / "cache", mirror=server.url, progress=False, timeout=5)
    assert got.data.read_text().splitlines() == [
        "user_id\titem_id\trating\ttimestamp", "1\t1193\t5\t978300760", "1\t661\t3\t978302109", "2\t1193\t4\t978298413"]
    data = load_interactions_csv(got.data, user_col="user_id", item_col="item_id", rating_col="rating",
                                 min_rating=4, split=(1.0, 0.0, 0.0))
    assert data.train.nnz == 2


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-100k/../../evil.txt", "/abs/evil.txt", "C:/evil.txt", "..\\evil.txt"])
def test_zip_slip_member_is_refused_before_anything_is_written(tmp_path: Path, evil: str):
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"ml-100k/u.data": _U_DATA, evil: b"owned"}))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="unsafe member"):
        extract_zip(archive, out)
    assert list(out.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_a_corrupt_archive_is_a_data_error(tmp_path: Path):
    (tmp_path / "ml-100k.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        MovieLensRatings("ml-100k.zip", "u.data", "\t").convert(tmp_path)


# --- the catalog itself -------------------------------------------------------------------------

_PINNED_FROM_MANIFEST = {
    ("gowalla", "test.txt"): "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
    ("gowalla", "user_list.txt"): "5344c4d0deef610e1f148f23ad216a0db03b36f88834cd39a06786a672c5f5a1",
    ("gowalla", "item_list.txt"): "6b186f92890cc3f0c15a6dae5d6285f125a302bb8c5ea0cd9a16cf9c16347139",
    ("gowalla-lightgcnpp", "train.txt"): "d47e01d060624f389956c0b2f89a1ed8c453ea158631cd2b5320c241f3e1a073",
    ("gowalla-lightgcnpp", "valid.txt"): "ddc22c1cd9a7d14fd5cd0c98b1473b614f4323038fef74ae0d28cc9c92a08ba2",
    ("gowalla-lightgcnpp", "test.txt"): "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
    ("lastfm", "train.txt"): "1845769cb1a9834692d3cf884de523d23aa126fa6b58eb5f49e9628e8c317705",
    ("lastfm", "valid.txt"): "9ae3440becfcbba19d5a5a8298b7933126f89424a468de5765bf1c6f08a9e3eb",
    ("lastfm", "test.txt"): "0f0a15e3de2f868554ee1e32190c51db3e0ad0c4138e1428c66ba6de86102755",
}


def test_catalog_entries_are_well_formed():
    assert {"gowalla", "yelp2018", "lastfm", "gowalla-lightgcnpp", "ml-100k", "ml-1m", "criteo-sample",
            "avazu-sample"} <= set(names())
    for dataset in CATALOG:
        assert get_dataset(dataset.name) is dataset
        assert dataset.description and dataset.source and dataset.format in FORMATS
        for remote in dataset.files:
            parts = urllib.parse.urlsplit(remote.url)
            assert parts.scheme == "https" and parts.netloc, remote.url
            assert Path(parts.path).name == remote.name, remote.url  # a mirror serves the file under its upstream name
        if dataset.format == "lightgcn":
            assert dataset.data == "" and dataset.converter is None
            assert {"train.txt", "test.txt"} <= {f.name for f in dataset.files}
        else:
            assert dataset.data in dataset.outputs
        if dataset.converter is not None:
            assert set(dataset.converter.inputs) <= {f.name for f in dataset.files}
            assert dataset.data in dataset.converter.outputs
    pinned = {(d.name, f.name): f.sha256 for d in CATALOG for f in d.files if f.pinned}
    assert pinned == _PINNED_FROM_MANIFEST  # no hash that is not known for sure


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known: gowalla, yelp2018"):
        get_dataset("movielens")


@pytest.mark.parametrize("bad", [{"name": "x/y"}, {"url": "http://insecure/x"}, {"sha256": "ABC"}])
def test_remote_file_validation(bad: dict):
    with pytest.raises(ValueError):
        RemoteFile(**{"name": "x", "url": "https://host/x", **bad})


_SHARED = {("lastfm", n): f"lastfm_lightgcnpp_cf/{n}.gz" for n in ("train.txt", "valid.txt", "test.txt")} | {
    ("gowalla", "test.txt"): "gowalla_lightgcn/test.txt.gz",
    ("gowalla", "user_list.txt"): "gowalla_lightgcn/user_list.txt.gz",
    ("gowalla", "item_list.txt"): "gowalla_lightgcn/item_list.txt.gz",
    ("gowalla-lightgcnpp", "train.txt"): "gowalla_lightgcn/lightgcnpp_train.txt.gz",
    ("gowalla-lightgcnpp", "valid.txt"): "gowalla_lightgcn/lightgcnpp_valid.txt.gz",
}


def test_pinned_hashes_match_the_shared_copies(shared_data: Path):
    for (name, file), copy in _SHARED.items():
        remote = next(f for f in get_dataset(name).files if f.name == file)
        raw = gzip.decompress((shared_data / copy).read_bytes())
        assert (_sha(raw), len(raw)) == (remote.sha256, remote.size), (name, file)


# --- the command line ---------------------------------------------------------------------------


def test_cli_data_list(capsys, tmp_path: Path):
    from nas.app.cli import main

    (tmp_path / "lastfm").mkdir()
    (tmp_path / "lastfm" / "train.txt").write_bytes(b"0 1\n")
    assert main(["data", "list", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in names():
        assert name in lines
    assert " pinned " in lines["lastfm"] and " partial " in lines["lastfm"]
    assert " unpinned " in lines["ml-100k"] and " no " in lines["ml-100k"]
    assert "3/4 pinned" in lines["gowalla"]
    assert main(["data", "list", "--files"]) == 0
    out = capsys.readouterr().out
    assert "  ml-100k.zip  ?  unpinned  https://files.grouplens.org/" in out
    assert "ml-100k: F. M. Harper, J. A. Konstan" in out


def test_cli_data_get_converts_and_says_how_to_use_it(capsys, server: Server, tmp_path: Path):
    from nas.app.cli import main

    server.put("ml-100k/ml-100k.zip", _zip({"ml-100k/u.data": _U_DATA}))
    cache = tmp_path / "cache"
    assert main(["data", "get", "ml-100k", "--cache", str(cache), "--mirror", server.url, "--quiet"]) == 0
    out = capsys.readouterr().out
    ratings = cache / "ml-100k" / "ratings.tsv"
    assert f"embnas search --data {ratings} --rating-col rating --min-rating 4" in out
    assert "unpinned: the sha256 of ml-100k.zip is recorded" in out
    assert ratings.exists()
    assert main(["data", "get", "ml-100k", "--cache", str(cache), "--mirror", server.url, "--quiet"]) == 0
    assert "already in the cache, verified" in capsys.readouterr().out


def test_cli_data_get_errors_are_one_line(capsys, server: Server, tmp_path: Path):
    from nas.app.cli import main

    assert main(["data", "get", "movielens", "--cache", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embnas: error: unknown dataset 'movielens'") and "ml-100k" in err and "\n" not in err
    server.put("lastfm/train.txt", b"0 1\n")  # not the pinned file
    assert main(["data", "get", "lastfm", "--cache", str(tmp_path), "--mirror", server.url, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256 mismatch: expected 1845769c" in err and "\n" not in err
    assert not (tmp_path / "lastfm" / "train.txt").exists() and not (tmp_path / "lastfm" / "train.txt.part").exists()


def test_cli_data_get_lastfm_from_a_mirror_of_the_real_files(capsys, server: Server, shared_data: Path, tmp_path: Path):
    from nas.app.cli import main

    for split in ("train", "valid", "test"):
        server.put(f"lastfm/{split}.txt", gzip.decompress((shared_data / f"lastfm_lightgcnpp_cf/{split}.txt.gz").read_bytes()))
    cache = tmp_path / "cache"
    assert main(["data", "get", "lastfm", "--cache", str(cache), "--mirror", server.url, "--quiet"]) == 0
    out = capsys.readouterr().out
    folder = cache / "lastfm"
    assert f"embnas search --data {folder}" in out
    data = load_lightgcn(folder / "train.txt", folder / "valid.txt", folder / "test.txt")
    assert (data.n_users, data.n_items) == (1885, 17388)
