"""The web demo's limits (issue 20, finding 12): an upload over the size limit is refused with
HTTP 413 and not stored; an image over the pixel limit is refused from its header, before it is
decoded, with a message naming it; uploads live in a temporary folder removed when the server
stops (also on SIGTERM), never in the system's temporary folder after exit."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pytest
from PIL import Image

from clipdistill.deploy.web import image_from_upload, private_upload_folder, segment_for_web
from common import REPO

#: a stand-in for the predictor: the limits act before any model runs
FAKE_PREDICTOR = textwrap.dedent(
    """
    import numpy as np
    from clipdistill.deploy.predictor import SegResult

    class FakePredictor:
        class_names = ["cat", "dog"]
        colors = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)

        def set_class_names(self, names):
            self.class_names = list(names)

        def __call__(self, image):
            return SegResult(np.zeros(image.shape[:2], np.int32), None, self.class_names)

        def overlay(self, image, result, alpha=0.5):
            return image
    """
)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit grey pixels but holds almost no data:
    decoding it fails, reading its header does not."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_too_many_pixels_is_refused_from_the_header(tmp_path):
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header(12000, 12000))  # 144 Mpixels in 100 bytes
    payload = {"path": str(huge), "orig_name": "huge.png"}
    with pytest.raises(ValueError, match=r"huge\.png is 12000x12000 = 144,000,000 pixels"):
        image_from_upload(payload, [str(tmp_path)])
    # the same header within the limit reaches the decoder (which then finds no data)
    small = tmp_path / "small.png"
    small.write_bytes(_png_header(64, 48))
    with pytest.raises(ValueError, match="not a readable image"):
        image_from_upload({"path": str(small), "orig_name": "small.png"}, [str(tmp_path)])


def test_the_page_says_the_image_is_too_large(tmp_path):
    exec(FAKE_PREDICTOR, ns := {})
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(path)
    payload = {"path": str(path), "orig_name": "photo.png"}
    overlay, _, status = segment_for_web(
        ns["FakePredictor"](), payload, "cat, dog", allowed_roots=[str(tmp_path)], max_pixels=1000
    )
    assert overlay is None
    assert "Error" in status and "photo.png is 40x30 = 1,200 pixels" in status
    assert "--max-pixels" in status
    overlay, _, status = segment_for_web(
        ns["FakePredictor"](), payload, "cat, dog", allowed_roots=[str(tmp_path)], max_pixels=1200
    )
    assert overlay is not None, status


def test_private_upload_folder_is_removed_and_the_environment_restored(tmp_path, monkeypatch):
    parent = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(parent))
    with private_upload_folder() as folder:
        assert os.environ["GRADIO_TEMP_DIR"] == folder
        assert os.path.dirname(folder) == str(parent)
        open(os.path.join(folder, "upload.png"), "wb").close()
    assert not os.path.exists(folder)
    assert os.environ["GRADIO_TEMP_DIR"] == str(parent)
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    with private_upload_folder() as folder:
        assert os.path.dirname(folder) == os.path.realpath(__import__("tempfile").gettempdir())
    assert "GRADIO_TEMP_DIR" not in os.environ and not os.path.exists(folder)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload(url: str, data: bytes, name: str = "image.png"):
    """POST one file to Gradio's upload route: (HTTP status, body)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(
        url + "gradio_api/upload",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_server_limits_uploads_and_keeps_none_after_sigterm(tmp_path):
    """The served app (in its own process, as tools/web_demo.py serves it): 413 over the size
    limit, the accepted upload in the private folder, and the folder gone after SIGTERM."""
    port = _free_port()
    parent = tmp_path / "gradio"
    script = FAKE_PREDICTOR + textwrap.dedent(
        f"""
        from clipdistill.deploy.web import build_app, launch, private_upload_folder

        with private_upload_folder() as folder:
            print("FOLDER", folder, flush=True)
            launch(build_app(FakePredictor()), port={port}, max_upload_bytes=4000)
        print("STOPPED", flush=True)
        """
    )
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        GRADIO_TEMP_DIR=str(parent),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], cwd=REPO, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.5)
        folder = log_path.read_text().split("FOLDER ", 1)[1].split()[0]
        assert os.path.dirname(folder) == str(parent)

        status, body = _upload(url, os.urandom(10_000))
        assert status == 413, body
        assert "4000" in body  # the message says the limit
        status, body = _upload(url, os.urandom(1000))
        assert status == 200, body
        stored = json.loads(body)[0]
        assert stored.startswith(folder) and os.path.isfile(stored)

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "STOPPED" in log_path.read_text(), log_path.read_text()[-3000:]
    assert not os.path.exists(folder)
    assert os.listdir(parent) == []  # nothing of the uploads is left
