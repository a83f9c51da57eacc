"""``wan-parity serve`` end to end: a real server on 127.0.0.1, the stdlib as the client.

The API's own behaviour (validation, queue, token, restart) uses a stand-in render, so it needs no model; the exactness
test renders the shared CPU oracle's case_a step 0 preview through the server and through ``wan-parity render`` and
requires both to be byte-identical to ai-toolkit's golden WebP (and the lossless frames to its pre-encode frames).
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.generate import stand_in
from harness.options import RunOptions
from harness.result import PreviewResult
from harness.serve.client import call, serving, until, wait_for
from harness.serve.jobs import INTERRUPTED, JobStore
from harness.serve.server import build_service, check_host

from .oracle_paths import ORACLE, TINY_MODEL, needs_oracle, output_dir, skip_unless_exact_expected


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (200, 30, 10)).save(folder / "ctrl.png")
    return folder


def fake_render(gate: threading.Event | None = None):
    """Writes a WebP-named file per prompt; waits for ``gate`` first when given (a render that is still running)."""
    def render(target, folder, stem):
        if gate is not None:
            assert gate.wait(60)
        path = Path(folder) / f"{stem}.webp"
        path.write_bytes(b"RIFF-fake-" + target.preview.sample.prompt.encode())
        return PreviewResult(key=target.key, case=target.preview.case, step=target.preview.step,
                             index=target.preview.index, status="rendered", render_path=str(path))
    return render


def service(results: Path, roots, **kw):
    options = RunOptions(base_model=str(results), device="cpu", threads=2, out=results)
    return build_service(options, stand_in(), results, roots, **kw)


def body(ctrl="ctrl.png", **prompt) -> dict:
    return {"model": "wan22_14b_i2v", "prompts": [{"prompt": "a cat", "ctrl_img": ctrl, **prompt}], "loras": []}


@pytest.mark.parametrize("payload, status, field", [
    (b"{not json", 400, None),
    ({**body(), "model": "wan21"}, 422, "model"),
    (body(ctrl="https://example.com/x.png"), 422, "prompts[0].ctrl_img"),
    (body(ctrl="/etc/hostname"), 422, "prompts[0].ctrl_img"),
    (body(ctrl="../outside.png"), 422, "prompts[0].ctrl_img"),
    (body(golden="out.webp"), 422, "prompts[0].golden"),
    (body(widht=512), 422, "prompts[0].widht"),
    (body(width=10), 422, "prompts[0].width"),
    ({**body(), "loras": [{"path": "/etc/hostname", "transformer": "high"}]}, 422, "loras[0].path"),
])
def test_bad_requests_name_the_field(tmp_path, root, payload, status, field):
    svc = service(tmp_path / "results", [root], render=fake_render())
    with serving(svc.app) as url:
        raw = payload if isinstance(payload, bytes) else None
        code, answer = call("POST", f"{url}/v1/inference", None if raw else payload, raw=raw)
    assert code == status and answer["error"]["field"] == field, answer
    assert svc.store.counts() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}


def test_a_job_runs_and_its_outputs_are_served(tmp_path, root):
    svc = service(tmp_path / "results", [root], render=fake_render())
    ctrl64 = base64.b64encode((root / "ctrl.png").read_bytes()).decode()
    with serving(svc.app) as url:
        code, job = call("POST", f"{url}/v1/inference", body(ctrl=ctrl64))
        assert code == 202 and job["status"] == "queued"
        record = wait_for(url, job["id"])
        assert record["status"] == "succeeded" and record["error"] is None
        code, data = call("GET", url + record["outputs"][0]["urls"]["render"])
        assert code == 200 and data == b"RIFF-fake-a cat"
        assert call("GET", f"{url}/v1/jobs/{job['id']}/outputs/request.json")[0] == 404  # only listed outputs
        assert call("GET", f"{url}/v1/jobs/{'0' * 32}")[0] == 404
        assert call("GET", f"{url}/v1/jobs/..%2Fjobs")[0] == 404
        health = call("GET", f"{url}/health")[1]
    assert health["status"] == "ok" and health["jobs"]["succeeded"] == 1 and health["device"] == "cpu"


def test_a_full_queue_answers_429(tmp_path, root):
    gate = threading.Event()
    svc = service(tmp_path / "results", [root], capacity=1, render=fake_render(gate))
    with serving(svc.app) as url:
        first = call("POST", f"{url}/v1/inference", body())[1]
        until(lambda: call("GET", f"{url}/v1/jobs/{first['id']}")[1]["status"] == "running", "job 1 to start", 60)
        second = call("POST", f"{url}/v1/inference", body())
        third = call("POST", f"{url}/v1/inference", body())
        assert second[0] == 202 and third[0] == 429 and "queue full" in third[1]["error"]["message"]
        assert call("GET", f"{url}/health")[1]["queue"] == {"waiting": 1, "capacity": 1, "running": first["id"]}
        gate.set()
        assert wait_for(url, first["id"])["status"] == wait_for(url, second[1]["id"])["status"] == "succeeded"
    assert svc.store.counts()["succeeded"] == 2 and len(list((tmp_path / "results" / "jobs").iterdir())) == 2


def test_token_guards_everything_but_health(tmp_path, root):
    svc = service(tmp_path / "results", [root], token="s3cret", render=fake_render())
    with serving(svc.app) as url:
        assert call("POST", f"{url}/v1/inference", body())[0] == 401
        assert call("POST", f"{url}/v1/inference", body(), token="wrong")[0] == 401
        code, job = call("POST", f"{url}/v1/inference", body(), token="s3cret")
        assert code == 202 and wait_for(url, job["id"], token="s3cret")["status"] == "succeeded"
        assert call("GET", f"{url}/health")[0] == 200
    check_host("127.0.0.1", None)
    check_host("0.0.0.0", "s3cret")


def test_a_restart_keeps_finished_jobs_and_fails_interrupted_ones(tmp_path, root):
    results = tmp_path / "results"
    with serving(service(results, [root], render=fake_render()).app) as url:
        done = wait_for(url, call("POST", f"{url}/v1/inference", body())[1]["id"])
    orphan = JobStore(results).create(body(), 1)  # queued when the old process died
    svc = service(results, [root], render=fake_render())
    with serving(svc.app) as url:
        again = call("GET", f"{url}/v1/jobs/{done['id']}")[1]
        assert again["status"] == "succeeded" and again["outputs"] == done["outputs"]
        assert call("GET", url + again["outputs"][0]["urls"]["render"])[1] == b"RIFF-fake-a cat"
        lost = call("GET", f"{url}/v1/jobs/{orphan['id']}")[1]
    assert lost["status"] == "failed" and lost["error"]["message"] == INTERRUPTED
    assert json.loads((results / "jobs" / done["id"] / "request.json").read_text()) == body()


# ---------------------------------------------------------------- exactness on the CPU oracle

CASE_A_STEP0 = "1795789035531__000000000_0"  # step 0 (no LoRA), sample 0 of case_a


def oracle_request(ctrl: str) -> dict:
    """case_a's sample 0 as the seed's request (64x64 is what ai-toolkit snapped its 72x56 to)."""
    return {"model": "wan22_14b_i2v", "trigger_word": "sks", "loras": [],
            "prompts": [{"prompt": "[trigger] a red cat walks slowly in the misty forest", "ctrl_img": ctrl,
                         "width": 64, "height": 64, "num_frames": 9, "fps": 16, "seed": 42, "sample_steps": 6,
                         "guidance_scale": 4.0, "neg": ""}]}


@needs_oracle
@pytest.mark.oracle
def test_served_render_is_the_cli_render_is_the_golden(tmp_path):
    from harness.cli import main

    golden = output_dir("case_a") / "samples" / f"{CASE_A_STEP0}.webp"
    raw = np.load(output_dir("case_a") / "samples_raw" / f"{CASE_A_STEP0}.npy")
    options = RunOptions(base_model=str(TINY_MODEL), device="cpu", threads=2, out=tmp_path / "results",
                         save_frames=True)
    svc = build_service(options, stand_in(), tmp_path / "results", [ORACLE])
    skip_unless_exact_expected(svc.engine, "cpu", "cpu")
    with serving(svc.app) as url:
        code, job = call("POST", f"{url}/v1/inference", oracle_request("assets/ctrl/ctrl_0.png"))
        assert code == 202, job
        record = wait_for(url, job["id"])
        assert record["status"] == "succeeded", record["error"]
        served = call("GET", url + record["outputs"][0]["urls"]["render"])[1]
        frames = call("GET", url + record["outputs"][0]["urls"]["frames"])[1]
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(oracle_request(str(ORACLE / "assets" / "ctrl" / "ctrl_0.png"))))
    assert main(["render", str(request_file), "--base-model", str(TINY_MODEL), "--device", "cpu", "--threads", "2",
                 "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())["results"][0]
    assert served == Path(cli["render_path"]).read_bytes() == golden.read_bytes()
    (tmp_path / "frames.npy").write_bytes(frames)
    assert np.array_equal(np.load(tmp_path / "frames.npy"), raw)
    assert record["outputs"][0]["frames_sha256"] == cli["frames_sha256"]
    assert record["outputs"][0]["profile"] == cli["profile"] == "aitk-euler"
