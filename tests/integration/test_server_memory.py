"""One large upload must not cost the server its memory: a 9900x9900 photo (98 Mpx, under the
100 Mpx and 20 MB caps) sent four times at once to a real ``geoguide serve`` process. Before the
bounded decoder, one such upload raised the server's RSS by 1.57 GB and kept it."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serving import free_port, wait_until_up

PEAK_GROWTH_MB = 300  # four concurrent 98 Mpx uploads, bounded: measured 130 MB; before: 1,570 MB for one
SETTLED_GROWTH_MB = 100  # what stays after the uploads are answered: measured 12 MB


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc (Linux)")
def test_large_uploads_decode_within_a_bounded_footprint(synthetic_index, tmp_path):
    photo = tmp_path / "big.jpg"
    subprocess.run([sys.executable, "-c",  # made in another process: the test's own memory stays small
                    "import sys; from PIL import Image; g = Image.linear_gradient('L').resize((9900, 9900)); "
                    "Image.merge('RGB', (g, g.transpose(Image.Transpose.ROTATE_90), g)).save(sys.argv[1], quality=85)",
                    str(photo)], check=True)
    assert photo.stat().st_size < 20 * 1024 * 1024
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "geoguide", "serve", "--index", str(synthetic_index.root),
                               "--vlm", "none", "--port", str(port), "--state-dir", str(tmp_path / "state")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(server, url)
        httpx.post(f"{url}/api/locate", files={"image": ("small.jpg", _small_jpeg(), "image/jpeg")}, timeout=60)
        before = _status_mb(server.pid, "VmRSS")
        data = photo.read_bytes()

        def upload(i: int) -> int:
            return httpx.post(f"{url}/api/locate", files={"image": (f"big{i}.jpg", data, "image/jpeg")},
                              timeout=120).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(upload, range(4)))
        assert codes == [200] * 4
        peak, after = _status_mb(server.pid, "VmHWM"), _status_mb(server.pid, "VmRSS")
        print(f"server RSS {before:.0f} MB before, peak {peak:.0f} MB, {after:.0f} MB after four 98 Mpx uploads")
        assert peak - before < PEAK_GROWTH_MB, (before, peak)
        assert after - before < SETTLED_GROWTH_MB, (before, after)
    finally:
        server.terminate()
        server.wait(timeout=20)


def _small_jpeg() -> bytes:
    import io

    from tests.synthetic import place_image

    out = io.BytesIO()
    place_image(0, variant=7).save(out, format="JPEG", quality=90)
    return out.getvalue()
