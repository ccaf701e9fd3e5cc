"""A fast sample of the fuzz and fault suite (the full run: scripts/fuzz.py --json out/fuzz.json)."""
from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import corpus
from tests.fuzz.runner import CLASS_NAME, run_case


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import isquant_tvm.api  # noqa: F401 - forked cases start warm

    path = tmp_path_factory.mktemp("fuzz")
    corpus.prepare_library(path, build=False)  # a stand-in library: the sampled checks all run before a load
    return path


def _sample(cases, names):
    chosen = [c for c in cases if c.name in names]
    assert len(chosen) == len(names)
    return chosen


def test_sample_of_models_and_arguments(work) -> None:
    models = corpus.model_cases(work)
    args = corpus.argument_cases()
    sample = _sample(models, {"trunc20", "flip10", "graph_cycle", "dims_int64", "attr_kernel5", "opset_99",
                              "op_unknown_FooBar", "weights_w1_nan", "dtype_bool", "graph_missing_input"})
    sample += _sample(args, {"bench--repeat=0", "target_cuda_tag", "path_report_is_output", "path_model_fifo",
                             "library_trunc5", "library_rand", "metadata_badjson", "metadata_negshape",
                             "path_bench_json_metadata"})
    sample = [c for c in sample if c.argv[0] != "compile"]  # keep the sample under a minute: no builds
    results = [run_case(c, work, work / "logs") for c in sample]
    bad = [r for r in results if r["verdict"] not in ("clear", "accepted")]
    assert not bad, bad
    assert sum(r["verdict"] == "clear" for r in results) >= len(results) - 2


def _parse_error(argv: list[str]) -> tuple[int, str]:
    from isquant_tvm.cli import build_parser

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    return int(done.value.code), err.getvalue()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--repeat", "--number", "--num-threads", "--print-top", "--session-timeout"]),
       value=st.one_of(st.integers(max_value=0).map(str), st.text(min_size=1, max_size=6).filter(
           lambda t: not t.strip().lstrip("+").replace(".", "", 1).isdigit() and not t.startswith("-"))))
def test_bad_numeric_flags_are_one_line(flag: str, value: str) -> None:
    code, err = _parse_error(["bench", "m.so", flag, value])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and flag in err, err
    assert not CLASS_NAME.search(err)


@settings(max_examples=40, deadline=None)
@given(expr=st.text(alphabet="s0123456789+-*/() _.'\"abcdefxyzimport", max_size=30))
def test_expression_check_never_lets_attributes_or_strings_through(expr: str) -> None:
    from isquant_tvm.frontend.safe_load import check_expression

    if check_expression(expr):
        assert "." not in expr and "'" not in expr and '"' not in expr and "__" not in expr
