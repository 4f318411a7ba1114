"""Issue 14, item 14: pretrained weights without network, or from a download cut short: one line naming the URL
and what to do offline (the file name expected and mindcv's cache folder), and never a partial file under the final
name; one left by an earlier run is removed, and said so. Only 127.0.0.1 is ever contacted."""
import http.server
import os
import socket
import threading

import mindcv
import pytest

import mindcv_ext  # noqa: F401  (registers the models)
from mindcv_ext.checkpoint import CheckpointError
from mindcv_ext.weights import load_pretrained, read_weights, save_weights

NAME = "demo_repmlp-0123abcd.ckpt"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr("mindcv.models.helpers.get_default_download_root", lambda: str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def server(tmp_path):
    """127.0.0.1 serving the weight file whole (/whole/...) and cut short (/short/...: the announced length, then
    the connection closes halfway)."""
    payload = open(save_weights(mindcv.create_model("demo_repmlp", num_classes=3), str(tmp_path / NAME)), "rb").read()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload if self.path.startswith("/whole/") else payload[:len(payload) // 2])

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def _net():
    return mindcv.create_model("demo_repmlp", num_classes=3)


def test_no_network_is_one_line_with_the_offline_way(cache):
    url = f"http://127.0.0.1:{_closed_port()}/x/{NAME}"
    with pytest.raises(CheckpointError) as e:
        load_pretrained(_net(), {"url": url})
    text = str(e.value)
    assert "\n" not in text and url in text and "--ckpt_path" in text and NAME in text and str(cache) in text
    assert os.listdir(cache) == []  # no 0-byte file for the next run to trip over


def test_download_cut_short_leaves_nothing_then_a_whole_one_loads(cache, server):
    with pytest.raises(CheckpointError, match="cannot download"):
        load_pretrained(_net(), {"url": f"{server}/short/{NAME}"})
    assert os.listdir(cache) == []
    net = _net()
    load_pretrained(net, {"url": f"{server}/whole/{NAME}"})
    assert os.listdir(cache) == [NAME] and read_weights(str(cache / NAME)).num_classes == 3


def test_an_earlier_runs_partial_file_is_removed_and_said(cache, server, tmp_path):
    cache.mkdir(parents=True)
    (cache / NAME).write_bytes(b"")  # what mindcv's downloader left when the network failed
    (cache / f".{NAME}.999999999-abcdEFGH.tmp.ckpt").write_bytes(b"half")  # ours, from a killed run (no such pid)
    said = []
    load_pretrained(_net(), {"url": f"{server}/whole/{NAME}"}, log=said.append)
    assert os.listdir(cache) == [NAME]
    assert any("incomplete download" in s and NAME in s for s in said), said
    assert any("interrupted by an earlier run" in s for s in said), said
