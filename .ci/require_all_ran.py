"""Fail unless a pytest JUnit report ran every test it holds: at least one test, none skipped, failed or in error.

`make test-vllm` runs it after tests/test_vllm.py, which skips itself where vllm does not import; a skip there means
the vLLM environment is broken, and must not pass as a green run.

    python .ci/require_all_ran.py REPORT.xml
"""

import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = sum(int(suite.get("tests", 0)) for suite in suites)
    # a test's reason is its message; a module skipped whole has "collection skipped" there and the reason in the text
    skipped = [(case.get("name"), (element.text or element.get("message", "")).strip())
               for suite in suites for case in suite.iter("testcase") for element in case.findall("skipped")]
    failed = sum(int(suite.get("failures", 0)) + int(suite.get("errors", 0)) for suite in suites)
    if total == 0:
        print(f"error: {path} holds no test: check the test file's path and that pytest collected it")
        return 1
    if skipped:
        name, reason = skipped[0]
        print(f"error: {len(skipped)} of {total} tests were skipped (first: {name}: {reason}); "
              "this run needs them all: fix the environment (`make clean`, then `make test-vllm` rebuilds it)")
        return 1
    if failed:
        print(f"error: {failed} of {total} tests failed or erred: see pytest's output above")
        return 1
    print(f"all {total} tests ran and passed ({path})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python .ci/require_all_ran.py REPORT.xml")
    sys.exit(main(sys.argv[1]))
