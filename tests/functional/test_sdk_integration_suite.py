"""The official Python SDK's own integration tests, run unchanged against ``uid2-operator serve``.

sdk-compat §3 (last part): the ``uid2-client`` 2.9.0 source distribution ships integration tests
that talk to a live operator when ``UID2_BASE_URL``, ``UID2_API_KEY`` and ``UID2_SECRET_KEY`` are
set. This test downloads that sdist from PyPI with pip (cached under the pytest cache; nothing is
copied into the project), starts a real server with a publisher key holding every client role,
and runs the six suites with ``python -m unittest``.

One exclusion, and only one: ``test_integration_bad_requests`` (``TestUid2PublisherClient`` in
``tests/test_publisher_client.py``) ends by calling ``https://www.something.com`` and expects an
``HTTPError``; without internet access that raises ``URLError`` whatever the server does. It may
fail, but only in that way: its report must be that one error, a ``URLError`` raised by the
HTTPS request of the ``www.something.com`` client, at that client's call in the test; any other
failure in it fails this test. Every other test must pass. The EUID class of the same file is
skipped by the SDK itself (no ``EUID_*`` variables).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import database_for
from sdk_sdist import run_sdk_tests
from serve_harness import Prepared, Served, clean_env, prepare, served

pytestmark = pytest.mark.functional

SUITES = (
    "tests/test_publisher_client.py",
    "tests/test_identity_map_client.py",
    "tests/test_identity_map_v3_client.py",
    "tests/test_bidstream_client_e2e.py",
    "tests/test_sharing_client_e2e.py",
    "tests/test_doc_sample_code.py",
)
EXPECTED_TESTS = 7 + 18 + 18 + 6 + 6 + 12
NEEDS_INTERNET = "test_integration_bad_requests"
OFFLINE_CLASS = "tests.test_publisher_client.PublisherUid2IntegrationTests"
OFFLINE_FILE = "tests/test_publisher_client.py"
OFFLINE_CLIENT = 'bad_url_client = Uid2PublisherClient("https://www.something.com",'
OFFLINE_CALL = "bad_url_client.generate_token("
SECTION = "=" * 70
RULE = "-" * 70
FRAME = re.compile(r'^  File "([^"]+)", line (\d+), in (\w+)\n    (\S.*)$', re.M)


def failure_reports(output: str) -> dict[str, str]:
    """unittest's report of each failed test: its heading (``ERROR: name (id)``) -> traceback."""
    reports: dict[str, str] = {}
    for chunk in output.split(f"\n{SECTION}\n")[1:]:
        heading, _, body = chunk.partition(f"\n{RULE}\n")
        reports[heading.strip()] = body.split(f"\n{RULE}\nRan ", 1)[0]
    return reports


def offline_failure_problems(reports: dict[str, str]) -> list[str]:
    """Why ``reports`` are not exactly the one excused failure (empty if they are)."""
    heading = f"ERROR: {NEEDS_INTERNET} ({OFFLINE_CLASS}.{NEEDS_INTERNET})"
    if list(reports) != [heading]:
        return [f"expected only {heading!r}, got {list(reports)}"]
    # The exception that escaped the test: the last traceback of the chain.
    last = reports[heading].rsplit("Traceback (most recent call last):", 1)[-1]
    problems: list[str] = []
    final = last.strip().splitlines()[-1]
    if not re.fullmatch(r"urllib\.error\.URLError: <urlopen error .+>", final):
        problems.append(f"it ended in {final!r}, not a URLError")
    frames = FRAME.findall(last)
    in_test = [f for f in frames if f[0].endswith("/" + OFFLINE_FILE)]
    if [(f[2], f[3].startswith(OFFLINE_CALL)) for f in in_test] != [(NEEDS_INTERNET, True)]:
        problems.append(f"it was not raised by {OFFLINE_CALL}...): {in_test}")
    if "https_open" not in {f[2] for f in frames}:
        problems.append("it was not raised by an HTTPS request")
    return problems


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prepared, Served]]:
    with database_for("sqlite", tmp_path_factory.mktemp("sdk-suite")) as database:
        prepared = prepare(database)
        with served(database) as running:
            yield prepared, running


def test_the_sdk_integration_suites_pass(sdk_source: Path, server: tuple[Prepared, Served]) -> None:
    prepared, running = server
    env = clean_env(
        {
            "UID2_BASE_URL": running.base_url,
            "UID2_API_KEY": prepared.key.key,
            "UID2_SECRET_KEY": prepared.key.secret,
        }
    )
    _, output = run_sdk_tests(sdk_source, env, *SUITES)
    failed = set(re.findall(r"^(?:FAIL|ERROR): (\w+) \(", output, re.M))
    assert failed <= {NEEDS_INTERNET}, output[-6000:]
    if failed:
        assert offline_failure_problems(failure_reports(output)) == [], output[-6000:]
        # The call in that frame is the one on the client of www.something.com.
        assert OFFLINE_CLIENT in (sdk_source / OFFLINE_FILE).read_text()
    ran = re.search(r"^Ran (\d+) tests?", output, re.M)
    assert ran is not None, output[-3000:]
    assert int(ran.group(1)) == EXPECTED_TESTS, output[-3000:]
    skipped = re.findall(r"^(\w+) \(([\w.]+)\)[^\n]*\.\.\. skipped", output, re.M)
    assert all("Euid" in where for _, where in skipped), skipped  # EUID needs EUID_* variables
    summary = re.search(r"^(OK|FAILED) \((.*)\)$|^OK$", output, re.M)
    assert summary is not None, output[-3000:]
    counts = dict(re.findall(r"(\w+)=(\d+)", summary.group(2) or ""))
    assert int(counts.get("failures", 0)) + int(counts.get("errors", 0)) == len(failed)
    assert int(counts.get("skipped", 0)) == len(skipped) <= 3


OFFLINE_REPORT = f"""test_other (tests.test_sharing_client_e2e.Case.test_other) ... ok

{SECTION}
ERROR: {NEEDS_INTERNET} ({OFFLINE_CLASS}.{NEEDS_INTERNET})
{RULE}
Traceback (most recent call last):
  File "/usr/lib/python3.11/socket.py", line 962, in getaddrinfo
    for res in _socket.getaddrinfo(host, port, family, type, proto, flags):
socket.gaierror: [Errno -2] Name or service not known

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/sdk/{OFFLINE_FILE}", line 201, in {NEEDS_INTERNET}
    bad_url_client.generate_token(TokenGenerateInput.from_email("test@example.com"))
  File "/sdk/uid2_client/request_response_util.py", line 50, in post
    return request.urlopen(req)
           ^^^^^^^^^^^^^^^^^^^^
  File "/usr/lib/python3.11/urllib/request.py", line 1391, in https_open
    return self.do_open(http.client.HTTPSConnection, req,
  File "/usr/lib/python3.11/urllib/request.py", line 1351, in do_open
    raise URLError(err)
urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>

{RULE}
Ran 67 tests in 2.144s

FAILED (errors=1, skipped=3)
"""


def test_the_offline_failure_is_recognised() -> None:
    reports = failure_reports(OFFLINE_REPORT)
    assert list(reports) == [f"ERROR: {NEEDS_INTERNET} ({OFFLINE_CLASS}.{NEEDS_INTERNET})"]
    assert offline_failure_problems(reports) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # an assertion of the same test failing (the expired-token refresh, say)
        (
            "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>",
            "AssertionError: HTTPError not raised",
        ),
        (f"ERROR: {NEEDS_INTERNET}", f"FAIL: {NEEDS_INTERNET}"),
        # the operator itself answering an error status
        (
            "urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>",
            "urllib.error.HTTPError: HTTP Error 500: Internal Server Error",
        ),
        # a URLError, but from a call on the operator (down, or refusing the connection)
        ("    bad_url_client.generate_token(", "    bad_secret_client.generate_token("),
        ("in https_open", "in http_open"),
        # a URLError raised elsewhere than in the test's own frame
        (f"line 201, in {NEEDS_INTERNET}", "line 201, in setUpClass"),
        # another test failing as well
        (
            f"{RULE}\nRan 67",
            f"{SECTION}\nERROR: test_other (tests.test_sharing_client_e2e.Case.test_other)\n"
            f"{RULE}\nTraceback (most recent call last):\nValueError: boom\n\n{RULE}\nRan 67",
        ),
    ],
)
def test_any_other_failure_is_not_excused(old: str, new: str) -> None:
    assert old in OFFLINE_REPORT
    assert offline_failure_problems(failure_reports(OFFLINE_REPORT.replace(old, new))) != []
