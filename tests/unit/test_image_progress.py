"""The classic builder's JSON stream -> steps, cache hits, times, failures (no engine needed).

The chunks below are the shapes dockerd's classic builder sends through
docker-py's ``api.build(decode=True)``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from aibuild.errors import BuildError
from aibuild.image.progress import BuildProgress, BuildStep, PlainReporter


def fake_clock() -> Iterator[float]:
    t = 100.0
    while True:
        yield t
        t += 1.5


def progress() -> BuildProgress:
    ticks = fake_clock()
    return BuildProgress(clock=lambda: next(ticks))


CACHED_THEN_RUN = [
    {"stream": "Step 1/3 : FROM debian:12\n"},
    {"stream": " ---> 7f5b3b1c2d3e\n"},
    {"stream": "Step 2/3 : RUN pip install torch==2.13.0\n"},
    {"stream": " ---> Using cache\n"},
    {"stream": " ---> 0a1b2c3d4e5f\n"},
    {"stream": "Step 3/3 : COPY profile.yaml /etc/aibuild/profile.yaml\n"},
    {"stream": " ---> Running in 5f0e\n"},
    {"stream": "some out"},
    {"stream": "put\nsecond line\n"},
    {"stream": "Removing intermediate container 5f0e\n"},
    {"stream": " ---> 9e8d7c6b5a4f\n"},
    {"aux": {"ID": "sha256:" + "ab" * 32}},
    {"stream": "Successfully built 9e8d7c6b5a4f\n"},
    {"stream": "Successfully tagged aibuild:cpu\n"},
]


def feed_all(p: BuildProgress, chunks: list[dict[str, object]]) -> list[str]:
    kinds = []
    for chunk in chunks:
        kinds.extend(e.kind for e in p.feed(chunk))
    kinds.extend(e.kind for e in p.finish())
    return kinds


def test_steps_cache_and_output() -> None:
    p = progress()
    kinds = feed_all(p, CACHED_THEN_RUN)
    assert [(s.index, s.total, s.cached) for s in p.steps] == [
        (1, 3, False),
        (2, 3, True),
        (3, 3, False),
    ]
    assert p.steps[2].instruction == "COPY profile.yaml /etc/aibuild/profile.yaml"
    assert p.steps[2].output_lines == 2  # "some output" was split across chunks
    assert list(p.tail) == ["some output", "second line"]
    assert p.image_id == "sha256:" + "ab" * 32
    assert kinds.count("step") == 3
    assert kinds.count("step-done") == 3
    assert kinds.count("cached") == 1
    assert kinds[-1] == "done"
    assert all(s.duration == 1.5 for s in p.steps)


def test_error_chunk_raises_with_step_and_tail() -> None:
    p = progress()
    chunks = [
        {"stream": "Step 1/2 : FROM debian:12\n"},
        {"stream": "Step 2/2 : RUN pip install nosuchpackage\n"},
        {"stream": " ---> Running in 1234\n"},
        *({"stream": f"line {i}\n"} for i in range(30)),
        {"stream": "ERROR: No matching distribution found for nosuchpackage"},
        {
            "errorDetail": {
                "code": 1,
                "message": "The command '/bin/sh -c pip install nosuchpackage' returned a "
                "non-zero code: 1",
            },
            "error": "The command '/bin/sh -c pip install nosuchpackage' returned a non-zero "
            "code: 1",
        },
    ]
    with pytest.raises(BuildError) as info:
        for chunk in chunks:
            p.feed(chunk)
    err = info.value
    assert err.step == "RUN pip install nosuchpackage"
    assert "step 2/2 failed" in str(err)
    assert "returned a non-zero code: 1" in str(err)
    assert len(err.log_tail) == 20
    assert err.log_tail[-1] == "ERROR: No matching distribution found for nosuchpackage"
    text = err.format()
    assert "failing step: RUN pip install nosuchpackage" in text
    assert "line 29" in text


def test_error_detail_alone_is_not_ignored() -> None:
    p = progress()
    with pytest.raises(BuildError, match="pull access denied"):
        p.feed({"errorDetail": {"message": "pull access denied for nosuch/image"}})


def test_error_before_any_step() -> None:
    with pytest.raises(BuildError, match="the build failed: dockerfile parse error"):
        progress().feed({"error": "dockerfile parse error line 3: unknown instruction: RUNN"})


def test_stream_without_image_is_an_error() -> None:
    p = progress()
    p.feed({"stream": "Step 1/2 : FROM debian:12\n"})
    with pytest.raises(BuildError, match="without producing an image"):
        p.finish()


def test_successfully_built_gives_the_id_without_aux() -> None:
    p = progress()
    p.feed({"stream": "Step 1/1 : FROM debian:12\n"})
    p.feed({"stream": "Successfully built 0123456789ab\n"})
    p.finish()
    assert p.image_id == "0123456789ab"


def test_status_chunks_are_events() -> None:
    p = progress()
    events = p.feed({"status": "Downloading", "id": "abc", "progress": "[==>   ]"})
    assert [e.kind for e in events] == ["status"]
    assert events[0].text == "abc: Downloading [==>   ]"


def test_package_install_steps() -> None:
    assert BuildStep(1, 2, "RUN pip install --no-index torch==2.13.0").installs_packages
    assert BuildStep(1, 2, "RUN apt-get update && apt-get install -y python3").installs_packages
    assert BuildStep(1, 2, "RUN uv pip install -r r.txt").installs_packages
    assert not BuildStep(1, 2, "COPY requirements.txt /tmp/").installs_packages
    assert not BuildStep(1, 2, "RUN python3 -m venv /opt/venv").installs_packages


def test_plain_reporter_shows_steps_cache_and_times() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    p = progress()
    for chunk in CACHED_THEN_RUN:
        for event in p.feed(chunk):
            reporter.event(event)
    for event in p.finish():
        reporter.event(event)
    text = out.getvalue()
    assert "Step 2/3 : RUN pip install torch==2.13.0\n ---> Using cache\n" in text
    assert "Step 3/3 : COPY profile.yaml" in text
    assert "  some output\n" in text
    assert " ---> done in 1.5s" in text
