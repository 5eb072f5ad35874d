"""Bad input against the running generator API (agent A), auth on: schema-driven fuzzing of
every operation, hostile bodies, weight paths that escape the checkpoint root, and requests
without the right token. No 500s, no hangs, a 4xx with a detail for everything refused, and
no swap ever started by any of it."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from schemathesis import Case

from services.schemas import MAX_BATCH
from tests.reliability.pipeline.helpers import AUTH, GENERATOR_TOKEN, problems
from tests.utils.figures import Figures
from tests.utils.fuzz import fuzz_api
from tests.utils.hostile import JSON, auth_cases, hostile_bodies, raw_post
from tests.utils.pipeline import LocalStack, common, eventually

pytestmark = pytest.mark.slow


def bound_generation(case: Case) -> None:
    """A valid fuzzed request may ask for 256 problems x 16 samples x 4096 tokens: cap the
    work of valid values (2 problems, n 2, 4 tokens at most and at least), leave invalid ones
    as generated. A chat completion that names no limit gets one: its default is the context."""
    body = case.body if isinstance(case.body, dict) else {}
    if isinstance(body.get("problems"), list) and 1 <= len(body["problems"]) <= MAX_BATCH:
        body["problems"] = body["problems"][:2]
    if type(body.get("n")) is int and 1 <= body["n"] <= 16:
        body["n"] = min(body["n"], 2)
    for field in ("max_tokens", "max_completion_tokens"):
        if type(body.get(field)) is int and 1 <= body[field] <= 4096:
            body[field] = min(body[field], 4)
    if "messages" in body and not {"max_tokens", "max_completion_tokens"} & body.keys():
        body["max_tokens"] = 4
    sampling = body.get("sampling")
    if not isinstance(sampling, dict):
        return
    for field, low in (("max_tokens", 1), ("min_tokens", 0)):
        if type(sampling.get(field)) is int and low <= sampling[field] <= 4096:
            sampling[field] = min(sampling[field], 4)


def metric(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples in an exposition `text`."""
    pattern = re.compile(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


async def test_fuzz_generator_no_server_errors(pipeline: LocalStack, figures: Figures) -> None:
    url = pipeline.url("generator")
    report = fuzz_api(url, AUTH, max_examples=20, timeout_s=120, prepare=bound_generation)

    async def jobs_done() -> bool:  # fuzzed wait=false requests run on in the background
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"{url}/metrics")).text
        return metric(text, "gvloop_generator_problems_in_flight") == 0

    await eventually(jobs_done, "fuzzed background jobs to finish", pipeline)
    figures.report(inputs=report.inputs, statuses=report.by_status(), failures=len(report.failures))
    assert not report.failures, "\n".join(report.failures[:10])
    assert report.count(200) > 0 and report.count(422) > 0  # both modes reached the handlers


def test_hostile_bodies_get_4xx_with_detail(pipeline: LocalStack, figures: Figures) -> None:
    url = pipeline.url("generator")
    valid = problems("hostile", n=1)
    statuses = {}
    for case in hostile_bodies(valid, ("problems", 0, "problem"), 8_000_000):
        response = raw_post(url, "/problems", case.content, {**AUTH, **case.headers})
        statuses[case.name] = response.status
        assert case.answered_well(response), (case.name, response.status, response.body[:300])
    assert httpx.post(f"{url}/problems", json=valid, headers=AUTH, timeout=120).is_success
    figures.report(
        inputs=len(statuses),
        server_errors=sum(s >= 500 for s in statuses.values()),
        statuses=statuses,
    )


def settled_weights(url: str) -> tuple[dict[str, object], float]:
    """The served weights and the swap count, once no swap has landed for 30 s: a swap the
    stopped trainer had posted may still be staging."""

    def read() -> tuple[dict[str, object], float]:
        weights = httpx.get(f"{url}/weights", headers=AUTH, timeout=10).json()
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return weights, metric(text, "gvloop_generator_swaps_total")

    state, unchanged_s = read(), 0.0
    for _ in range(60):
        time.sleep(5)
        latest = read()
        unchanged_s = unchanged_s + 5 if latest == state else 0.0
        state = latest
        if unchanged_s >= 30:
            break
    return state


def test_weight_paths_outside_the_root_are_refused(
    pipeline: LocalStack, tiny_model_dir: Path, figures: Figures
) -> None:
    root = common(pipeline).checkpoint_root
    root.mkdir(parents=True, exist_ok=True)
    link = root / "rel-link-out"
    link.unlink(missing_ok=True)
    link.symlink_to(tiny_model_dir, target_is_directory=True)
    (root / "rel-a-file").write_text("not a checkpoint")
    (root / "rel-empty").mkdir(exist_ok=True)
    outside = {
        "parent": "../outside",
        "absolute": "/etc",
        "filesystem root": "/",
        "dot-dot chain": "step_1/../../../../etc",
        "the served model": str(tiny_model_dir),
        "symlink inside pointing out": str(link),
    }
    not_a_checkpoint = {
        "the root itself": ".",
        "home": "~",
        "missing": "step_missing",
        "a file": "rel-a-file",
        "empty directory": "rel-empty",
        "NUL byte": "step_1\x00/../../etc",
        "name too long": "a" * 4000,
        "newline": "step_1\n../../etc",
    }
    url = pipeline.url("generator")
    if pipeline.running("trainer"):  # its own swaps would change the version under this test
        pipeline.stop("trainer")
    before, swaps = settled_weights(url)
    statuses, wrong = {}, {}
    for cases, expect in ((outside, {403}), (not_a_checkpoint, {400, 403, 422})):
        for name, path in cases.items():
            body = {"checkpoint_dir": path, "version": 99}
            response = httpx.post(f"{url}/weights", json=body, headers=AUTH, timeout=60)
            statuses[name] = response.status_code
            if response.status_code not in expect or '"detail"' not in response.text:
                wrong[name] = f"{response.status_code} {response.text[:200]}"
    after = httpx.get(f"{url}/weights", headers=AUTH, timeout=10).json()
    swaps_after = metric(
        httpx.get(f"{url}/metrics", timeout=10).text, "gvloop_generator_swaps_total"
    )
    figures.report(
        inputs=len(statuses),
        refused=sum(400 <= s < 500 for s in statuses.values()),
        swaps_started=int(swaps_after - swaps),
        statuses=statuses,
    )
    assert not wrong, wrong
    assert after == before
    assert swaps_after == swaps


def test_requests_without_the_token_get_401(pipeline: LocalStack, figures: Figures) -> None:
    url = pipeline.url("generator")
    routes = [
        ("POST", "/problems", problems("auth", n=1)),
        ("POST", "/weights", {"checkpoint_dir": "step_1", "version": 1}),
        ("GET", "/weights", None),
        ("GET", "/jobs/0123abcd", None),
    ]
    statuses = {}
    for name, headers in auth_cases(GENERATOR_TOKEN):
        for method, path, body in routes:
            if method == "POST":
                response = raw_post(url, path, json.dumps(body).encode(), {**JSON, **headers})
                status = response.status
            else:  # header values httpx refuses to send stay POST-only cases
                if not all(v.isascii() and len(v) < 10_000 for v in headers.values()):
                    continue
                status = httpx.get(f"{url}{path}", headers=headers, timeout=30).status_code
            statuses[f"{name} {method} {path}"] = status
            assert status in {401, 431}, (name, method, path, status)
    assert httpx.get(f"{url}/weights", headers=AUTH, timeout=10).status_code == 200
    figures.report(inputs=len(statuses), refused=sum(s in {401, 431} for s in statuses.values()))
