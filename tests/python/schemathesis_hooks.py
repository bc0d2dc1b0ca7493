"""Schemathesis hooks for safeloop-serve (loaded through SCHEMATHESIS_HOOKS by scripts/fuzz_api.sh).

`positive_data_accepted` replaces the built-in `positive_data_acceptance`: a request the
document allows must be accepted, except for the cross-field rules the operations' descriptions
name, which answer 400 with code `conflicting_parameters` or `context_length_exceeded`. Any other
400/422 on schema-valid data means the document promises more than the validator accepts.
"""

import ast
import json
import linecache
import pathlib

import schemathesis


def _parse_lambda_sources_now():
    """Hypothesis names a lambda (in a strategy's repr, while it validates one) by parsing the whole source file that
    defines it, the first time, then caches the result. Inside schemathesis's coverage phase that parse happens deep in
    the recursion over the chat request schema, where Python 3.11's AST constructor failed ("SystemError: AST
    constructor recursion depth mismatch") — a crash of the tool, in about half the runs, not a finding. Parsing
    schemathesis's own files here, at the top of the stack, fills that cache first. Hypothesis internals, so any
    mismatch (another version) just skips it."""
    try:
        from hypothesis.internal import lambda_sources

        for path in sorted(pathlib.Path(schemathesis.__file__).parent.rglob("*.py")):
            lines = tuple(linecache.getlines(str(path)))
            if lines and any("lambda" in line for line in lines):
                lambda_sources.AST_LAMBDAS_CACHE[lines] = lambda_sources.extract_all_lambdas(ast.parse("".join(lines)))
    except Exception:  # noqa: BLE001 — best effort, see above
        pass


_parse_lambda_sources_now()

CROSS_FIELD_CODES = {"conflicting_parameters", "context_length_exceeded"}


@schemathesis.check
def positive_data_accepted(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"schema-valid request rejected with {response.status_code} and no error object")
    if error.get("code") in CROSS_FIELD_CODES:
        return None
    raise AssertionError(
        f"schema-valid request rejected with {response.status_code}: {error.get('message')!r} "
        f"(param {error.get('param')!r}); the document allows what the validator refuses"
    )


@schemathesis.check
def error_object_names_field(ctx, response, case):
    """Every 4xx/5xx is an OpenAI error object (message, type, param, code)."""
    if response.status_code < 400:
        return None
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{response.status_code} without an OpenAI error object: {response.content[:200]!r}")
    for key in ("message", "type", "param", "code"):
        if key not in error:
            raise AssertionError(f"the error object lacks `{key}`: {error}")
    return None
