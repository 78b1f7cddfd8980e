"""Code completion for ``POST /api/v1/autocomplete``.

The HTTP route only depends on the :class:`CompletionEngine` protocol, so the
rule-based mock here can later be swapped for a model-backed engine without
touching the route.  :class:`RuleBasedEngine` is deliberately deterministic
(no randomness, no clock, no iteration over hash-ordered sets) so that tests
and collaborating clients see identical suggestions for identical input, and it
never raises on odd input because an editor fires completion requests on every
keystroke, including while the buffer is half-typed garbage.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

__all__ = [
    "CompletionEngine",
    "RuleBasedEngine",
    "Suggestion",
    "utf16_offset_to_index",
]

# Completion only needs local context; looking at a bounded window keeps a
# multi-megabyte document as cheap as a small one.
_WINDOW_BEFORE = 10_000
_WINDOW_AFTER = 2_000
# Regex searches over the current line only look at its tail, so a single
# pathological 10,000-character line cannot trigger quadratic backtracking.
_LINE_TAIL = 400

_INDENT_UNIT = "    "
_CLOSE_CONFIDENCE = 0.2


@dataclass(frozen=True)
class Suggestion:
    """One completion candidate.

    ``text`` is inserted at the cursor as-is, so it leaves out the part of the
    word the user already typed; ``label`` is the whole word or snippet a
    completion menu shows; ``confidence`` (0 to 1) orders the candidates.
    """

    text: str
    label: str
    confidence: float

    def __post_init__(self) -> None:
        """Reject confidences outside [0, 1] (including NaN) for every engine."""
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must be within [0, 1], got {self.confidence!r}")


class CompletionEngine(Protocol):
    """What the HTTP layer needs from a completion backend.

    A single method keeps the seam small enough for a real model to replace
    :class:`RuleBasedEngine` without changes elsewhere.
    """

    def complete(self, code: str, cursor: int, language: str) -> list[Suggestion]:
        """Suggest completions for ``code`` at ``cursor`` (a code-point index), best first."""
        ...


def _utf16_units(text: str) -> int:
    """Length of ``text`` in UTF-16 code units (lone surrogates count as one)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def utf16_offset_to_index(text: str, offset: int) -> int:
    """Convert a UTF-16 code-unit offset into an index into the Python ``str``.

    Monaco (like every JavaScript string API) counts UTF-16 code units, where a
    character outside the Basic Multilingual Plane, e.g. an emoji, takes two
    units, while Python indexes code points.  Out-of-range offsets are clamped
    to ``[0, len(text)]`` and an offset between the two halves of a surrogate
    pair rounds down to the start of that character, so the result is always a
    valid cursor position.
    """
    if offset <= 0:
        return 0
    # Each code point is one or two units, so the answer is at most ``offset``.
    # Walk back from there in shrinking steps; encoding does the counting in C,
    # which keeps a 10 MB emoji-heavy document fast.
    index = min(offset, len(text))
    units = _utf16_units(text[:index])
    while units > offset:
        # Dropping ``step`` code points removes at most ``2 * step`` units,
        # so this never overshoots by more than one unit.
        step = (units - offset + 1) // 2
        units -= _utf16_units(text[index - step : index])
        index -= step
    if index < len(text) and units + _utf16_units(text[index]) <= offset:
        index += 1
    return index


# --------------------------------------------------------------------------
# Context around the cursor


_OPEN_TO_CLOSE = {"(": ")", "[": "]", "{": "}"}
_CLOSE_TO_OPEN = {close: open_ for open_, close in _OPEN_TO_CLOSE.items()}
_QUOTES = frozenset({'"', "'", "`", '"""', "'''"})
_SINGLE_LINE_QUOTES = frozenset({'"', "'"})


@dataclass(frozen=True)
class _Scan:
    """Lexical state at the cursor: unclosed brackets, open string, comment."""

    brackets: tuple[str, ...] = ()
    quote: str | None = None
    in_comment: bool = False


def _scan(text: str, tokens: re.Pattern[str] | None, line_comment: str) -> _Scan:
    """Track strings, comments and brackets up to the cursor.

    A heuristic lexer, not a parser: it is only used to avoid suggesting
    keywords inside strings and comments and to offer a closing bracket/quote.
    ``tokens`` matches just the characters that change that state, so plain
    text is skipped at regex speed.
    """
    if tokens is None:
        return _Scan()
    brackets: list[str] = []
    quote: str | None = None
    comment_end: str | None = None
    for match in tokens.finditer(text):
        token = match.group()
        if comment_end is not None:
            if token == comment_end or (comment_end == "\n" and token.endswith("\n")):
                comment_end = None
        elif quote is not None:
            # A triple quote token also closes a one-character string: the
            # remaining two quotes form an empty string literal.
            if token[: len(quote)] == quote or (token == "\n" and quote in _SINGLE_LINE_QUOTES):
                quote = None
        elif token == line_comment:
            comment_end = "\n"
        elif token == "/*":
            comment_end = "*/"
        elif token in _QUOTES:
            quote = token
        elif token in _OPEN_TO_CLOSE:
            brackets.append(token)
        elif token in _CLOSE_TO_OPEN and brackets and brackets[-1] == _CLOSE_TO_OPEN[token]:
            brackets.pop()
    return _Scan(tuple(brackets), quote, comment_end is not None)


@dataclass(frozen=True)
class _Context:
    """Everything the rules look at, computed once per request."""

    lang: _Language
    window: str  # bounded slice of the document around the cursor
    cursor: int  # cursor position inside ``window``
    before: str
    after: str
    prefix: str  # identifier characters typed immediately before the cursor
    line_before: str  # current line up to the cursor
    line_head: str  # ``line_before`` without ``prefix``
    completable: bool  # ``prefix`` is a non-empty identifier (not e.g. a number)
    after_dot: bool  # the prefix follows a ``.``: member access
    member_of: str | None  # dotted object name before that ``.``, if any
    scan: _Scan

    @property
    def in_code(self) -> bool:
        """Whether the cursor is outside strings and comments."""
        return self.scan.quote is None and not self.scan.in_comment


_DOTTED_TAIL = re.compile(r"(?<![\w$])((?:[^\W\d]|\$)[\w$]*(?:\.(?:[^\W\d]|\$)[\w$]*)*)\.\Z")


def _build_context(code: str, cursor: int, language: str) -> _Context:
    """Clamp the cursor, cut the bounded window and derive what rules need."""
    lang = _LANGUAGES.get(language.strip().lower(), _PLAIN)
    cursor = min(max(cursor, 0), len(code))
    start = max(0, cursor - _WINDOW_BEFORE)
    if start > 0:
        # Start on a line boundary so the lexer does not begin mid-token.
        newline = code.find("\n", start, cursor)
        if newline != -1:
            start = newline + 1
    window = code[start : cursor + _WINDOW_AFTER]
    local = cursor - start
    before = window[:local]
    # Matching the reversed text finds the identifier tail in linear time
    # (a forward ``\w*\Z`` search is quadratic on long runs of word chars).
    tail = lang.reversed_word.match(before[::-1])
    prefix = tail.group()[::-1] if tail else ""
    line_before = before[before.rfind("\n") + 1 :]
    line_head = line_before[: len(line_before) - len(prefix)]
    after_dot = line_head.endswith(".")
    dotted = _DOTTED_TAIL.search(line_head[-_LINE_TAIL:]) if after_dot else None
    return _Context(
        lang=lang,
        window=window,
        cursor=local,
        before=before,
        after=window[local:],
        prefix=prefix,
        line_before=line_before,
        line_head=line_head,
        completable=lang.identifier.fullmatch(prefix) is not None,
        after_dot=after_dot,
        member_of=dotted.group(1) if dotted else None,
        scan=_scan(before, lang.tokens, lang.line_comment),
    )


# --------------------------------------------------------------------------
# Helpers shared by the rules


def _suggest(text: str, label: str, confidence: float) -> Suggestion:
    """Build a suggestion with the confidence clamped and rounded for stable JSON."""
    return Suggestion(text, label, round(min(max(confidence, 0.0), 1.0), 3))


def _extends(word: str, prefix: str) -> bool:
    """Whether ``word`` is a strict continuation of what the user typed."""
    return len(word) > len(prefix) and word.startswith(prefix)


def _complete_word(ctx: _Context, spec: str, confidence: float, *, call: bool = True) -> Suggestion:
    """Complete ``spec`` (a word; a trailing ``(`` marks a callable) from the prefix.

    Callables get their opening parenthesis unless one already follows the
    cursor or ``call`` is false (e.g. in an ``import`` list).
    """
    word = spec.removesuffix("(")
    paren = "(" if call and spec.endswith("(") and not ctx.after.startswith("(") else ""
    return _suggest(word[len(ctx.prefix) :] + paren, word, confidence)


def _snippet(typed: str, text: str, confidence: float) -> Suggestion:
    """Suggest a multi-token snippet; the label is the whole snippet on one line."""
    return _suggest(text, " ".join((typed + text).split()), confidence)


def _indent(line: str) -> str:
    """Leading whitespace of ``line``."""
    return line[: len(line) - len(line.lstrip(" \t"))]


def _proximity(distance: int) -> float:
    """Score in (0, 1]: 1 right at the cursor, 0.5 about 500 characters away."""
    return 1.0 / (1.0 + distance / 500.0)


def _distance(match: re.Match[str], cursor: int) -> int:
    """Characters between a match and the cursor."""
    return match.start() - cursor if match.start() >= cursor else cursor - match.end()


# --------------------------------------------------------------------------
# Rules: each yields candidate suggestions; the engine merges and ranks them.

_Rule = Callable[[_Context], Iterator[Suggestion]]


def _keyword_rule(ctx: _Context) -> Iterator[Suggestion]:
    """Keywords and builtins of the language that extend the typed prefix.

    The more of the word is already typed, the likelier it is the intended one.
    """
    if not ctx.completable or ctx.after_dot or not ctx.in_code:
        return
    if ctx.lang.import_line is not None and ctx.lang.import_line.match(ctx.line_head):
        return  # module and member names belong here, not keywords
    for spec in ctx.lang.words:
        word = spec.removesuffix("(")
        if _extends(word, ctx.prefix):
            yield _complete_word(ctx, spec, 0.5 + 0.3 * len(ctx.prefix) / len(word))


def _identifier_rule(ctx: _Context) -> Iterator[Suggestion]:
    """Identifiers already used in the document, ranked by frequency and proximity.

    This is what makes the mock aware of the user's own code.  Inside strings
    and comments the words are still offered (prose reuses names) but ranked
    lower.
    """
    if not ctx.completable:
        return
    counts: dict[str, int] = {}
    nearest: dict[str, int] = {}
    for match in ctx.lang.identifier.finditer(ctx.window):
        word = match.group()
        if match.start() <= ctx.cursor <= match.end():
            continue  # the word being typed
        if len(word) < 3 or not _extends(word, ctx.prefix) or word in ctx.lang.word_set:
            continue
        distance = _distance(match, ctx.cursor)
        counts[word] = counts.get(word, 0) + 1
        nearest[word] = min(nearest.get(word, distance), distance)
    scale = 1.0 if ctx.in_code else 0.6
    for word, count in counts.items():
        score = (
            0.35
            + 0.2 * min(count, 10) / 10
            + 0.25 * _proximity(nearest[word])
            + 0.1 * len(ctx.prefix) / len(word)
        )
        yield _suggest(word[len(ctx.prefix) :], word, scale * score)


def _member_rule(ctx: _Context) -> Iterator[Suggestion]:
    """Members after ``obj.``: a curated list for well-known objects and modules,
    plus members the document already uses on that object (``self.x = ...``,
    ``this.x``, ``user.name``), with assigned ones ranked higher.
    """
    obj = ctx.member_of
    if obj is None or not ctx.in_code or (ctx.prefix and not ctx.completable):
        return
    for rank, spec in enumerate(ctx.lang.members.get(obj, ())):
        if _extends(spec.removesuffix("("), ctx.prefix):
            yield _complete_word(ctx, spec, 0.9 - 0.01 * rank)
    ident = r"((?:[^\W\d]|\$)[\w$]*)"
    pattern = re.compile(r"(?<![\w$])" + re.escape(obj) + r"\." + ident + r"(\s*=(?!=))?")
    assigned: dict[str, bool] = {}
    nearest: dict[str, int] = {}
    for match in pattern.finditer(ctx.window):
        name = match.group(1)
        if match.start() <= ctx.cursor <= match.end() or not _extends(name, ctx.prefix):
            continue
        distance = _distance(match, ctx.cursor)
        assigned[name] = assigned.get(name, False) or match.group(2) is not None
        nearest[name] = min(nearest.get(name, distance), distance)
    for name, is_assigned in assigned.items():
        base = 0.85 if is_assigned else 0.7
        yield _suggest(name[len(ctx.prefix) :], name, base + 0.05 * _proximity(nearest[name]))


def _closer_rule(ctx: _Context) -> Iterator[Suggestion]:
    """Close the innermost open string or bracket, as a low-confidence fallback.

    Skipped when the closer already follows the cursor (editors auto-close).
    """
    scan = ctx.scan
    if scan.in_comment:
        return
    if scan.quote is not None:
        if not ctx.after.startswith(scan.quote):
            yield _suggest(scan.quote, scan.quote, _CLOSE_CONFIDENCE)
    elif scan.brackets:
        closer = _OPEN_TO_CLOSE[scan.brackets[-1]]
        if not ctx.after.lstrip().startswith(closer):
            yield _suggest(closer, closer, _CLOSE_CONFIDENCE)


# Python-specific rules -----------------------------------------------------

_PY_BLOCK_KEYWORD = re.compile(r"[ \t]*(?:async[ \t]+)?([a-z]+)\b")
_PY_SIMPLE_BLOCKS = frozenset(
    {"if", "elif", "else", "for", "while", "with", "try", "except", "finally", "case"}
)
_PY_MAIN_GUARD = 'if __name__ == "__main__":'
_PY_FROM_MODULE = re.compile(r"[ \t]*from[ \t]+[\w.]+[ \t]+")
_PY_MODULE_POSITION = re.compile(r"[ \t]*(?:from|import)[ \t]+(?:[\w.]+[ \t]*,[ \t]*)*")
_PY_FROM_IMPORT = re.compile(
    r"[ \t]*from[ \t]+([\w.]+)[ \t]+import[ \t]+\(?[ \t]*(?:\w+[ \t]*,[ \t]*)*"
)
_PY_METHOD = re.compile(
    r"^[ \t]+(?:async[ \t]+)?def[ \t]+([^\W\d]\w*)[ \t]*\([ \t]*(?:self|cls)\b", re.MULTILINE
)
_PY_COMMON_MODULES = (
    "os",
    "sys",
    "re",
    "json",
    "math",
    "typing",
    "collections",
    "dataclasses",
    "pathlib",
    "itertools",
    "functools",
    "datetime",
    "asyncio",
    "logging",
    "subprocess",
    "random",
    "time",
    "unittest",
)


def _python_block_body(ctx: _Context) -> Iterator[Suggestion]:
    """On a blank line after ``def ...:`` (or another block opener) suggest a body.

    The text carries whatever indentation is still missing, so it is right
    whether or not the editor already auto-indented the new line.
    """
    if ctx.line_before.strip():
        return
    previous = ctx.before[: len(ctx.before) - len(ctx.line_before)].rstrip()
    previous = previous[previous.rfind("\n") + 1 :]
    opener = _PY_BLOCK_KEYWORD.match(previous)
    if opener is None or not previous.endswith(":"):
        return
    body = _indent(previous) + _INDENT_UNIT
    pad = body[len(ctx.line_before) :] if body.startswith(ctx.line_before) else ""
    keyword = opener.group(1)
    if keyword == "def":
        yield _snippet("", pad + "pass", 0.93)
        yield _snippet("", pad + "return ", 0.9)
        yield _snippet("", pad + "raise NotImplementedError", 0.86)
    elif keyword == "class":
        init = f"def __init__(self) -> None:\n{body}{_INDENT_UNIT}pass"
        yield _snippet("", pad + init, 0.92)
        yield _snippet("", pad + "pass", 0.9)
    elif keyword in _PY_SIMPLE_BLOCKS:
        yield _snippet("", pad + "pass", 0.9)


def _python_main_guard(ctx: _Context) -> Iterator[Suggestion]:
    """``if __name__`` -> the whole main guard calling ``main()``.

    Runs even "inside a string" because typing ``if __name__ == "__ma`` opens
    one; matching the typed line against the snippet keeps it precise.
    """
    typed = ctx.line_before.lstrip()
    if typed.startswith("if __") and _PY_MAIN_GUARD.startswith(typed):
        call = f"\n{_indent(ctx.line_before)}{_INDENT_UNIT}main()"
        yield _snippet(typed, _PY_MAIN_GUARD[len(typed) :] + call, 0.95)


def _python_imports(ctx: _Context) -> Iterator[Suggestion]:
    """``from x `` -> ``import``; module names after ``import``/``from``;
    known members after ``from module import``.
    """
    head, prefix = ctx.line_head, ctx.prefix
    if _PY_FROM_MODULE.fullmatch(head):
        if _extends("import", prefix):
            yield _suggest("import "[len(prefix) :], "import", 0.95)
    elif _PY_MODULE_POSITION.fullmatch(head):
        for rank, module in enumerate(_PY_COMMON_MODULES):
            if _extends(module, prefix):
                yield _suggest(module[len(prefix) :], module, 0.9 - 0.01 * rank)
    elif (imported := _PY_FROM_IMPORT.fullmatch(head)) is not None:
        for rank, spec in enumerate(ctx.lang.members.get(imported.group(1), ())):
            if _extends(spec.removesuffix("("), prefix):
                yield _complete_word(ctx, spec, 0.9 - 0.01 * rank, call=False)


def _python_snippet_rule(ctx: _Context) -> Iterator[Suggestion]:
    """Python context snippets: block bodies, main guard, imports."""
    yield from _python_main_guard(ctx)
    if ctx.in_code:
        yield from _python_block_body(ctx)
        yield from _python_imports(ctx)


def _python_method_rule(ctx: _Context) -> Iterator[Suggestion]:
    """After ``self.``/``cls.`` suggest methods defined in the document.

    Dunder methods are only offered once the user types an underscore.
    """
    if ctx.member_of not in ("self", "cls") or not ctx.in_code:
        return
    for match in _PY_METHOD.finditer(ctx.window):
        name = match.group(1)
        if name.startswith("__") and not ctx.prefix.startswith("_"):
            continue
        if _extends(name, ctx.prefix):
            yield _complete_word(ctx, name + "(", 0.8)


# JavaScript / TypeScript rules ----------------------------------------------

_JS_FUNCTION_PARAMS = re.compile(
    r"\bfunction\b[ \t]*\*?[ \t]*(?:[A-Za-z_$][\w$]*)?[ \t]*\([^()]*\Z"
)
_JS_ARROW_PARAMS = re.compile(r"(?:[=(,:]|\breturn)[ \t]*(?:async[ \t]*)?\([^()]*\)[ \t]*\Z")
_JS_ARROW_HALF = re.compile(r"\)[ \t]*=\Z")
_JS_IMPORT_START = re.compile(r"[ \t]*import[ \t]+")
_JS_IMPORT_CLAUSE = re.compile(
    r"[ \t]*import[ \t]+(?:type[ \t]+)?(?:\{[^{}]*\}|\*[ \t]*as[ \t]+[\w$]+|[\w$]+)[ \t]+"
)


def _js_snippet_rule(ctx: _Context) -> Iterator[Suggestion]:
    """JavaScript/TypeScript context snippets: function body, import clause, arrow."""
    if not ctx.in_code:
        return
    tail = ctx.line_before[-_LINE_TAIL:]
    if _JS_FUNCTION_PARAMS.search(tail) and not ctx.after.lstrip(" \t").startswith(")"):
        yield _snippet("", ") {\n" + _indent(ctx.line_before) + "}", 0.93)
    if _JS_IMPORT_START.fullmatch(ctx.line_head) and not ctx.prefix:
        yield _snippet("", "{ } from '';", 0.9)
    elif _JS_IMPORT_CLAUSE.fullmatch(ctx.line_head) and _extends("from", ctx.prefix):
        yield _suggest("from '';"[len(ctx.prefix) :], "from ''", 0.93)
    if ctx.prefix:
        return
    if _JS_ARROW_PARAMS.search(tail):
        space = "" if tail.endswith((" ", "\t")) else " "
        yield _suggest(space + "=> ", "=>", 0.9)
    elif _JS_ARROW_HALF.search(tail):
        yield _suggest("> ", "=>", 0.9)


# --------------------------------------------------------------------------
# Languages


@dataclass(frozen=True)
class _Language:
    """Per-language vocabulary, lexing and the rules that apply."""

    words: tuple[str, ...]  # keywords and builtins; a trailing "(" marks a callable
    members: Mapping[str, tuple[str, ...]]  # well-known object/module -> members
    identifier: re.Pattern[str]
    reversed_word: re.Pattern[str]  # identifier characters, matched on reversed text
    tokens: re.Pattern[str] | None  # what the string/comment/bracket scanner reacts to
    line_comment: str
    import_line: re.Pattern[str] | None  # lines where keywords make no sense
    rules: tuple[_Rule, ...]
    word_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        """Precompute bare words so the identifier rule can skip them cheaply."""
        object.__setattr__(self, "word_set", frozenset(w.removesuffix("(") for w in self.words))


def _words(text: str) -> tuple[str, ...]:
    """Split a whitespace-separated vocabulary table; keeps long word lists readable."""
    return tuple(text.split())


_PY_KEYWORDS = _words(
    """
False None True and as assert async await break class continue def del elif else except
finally for from global if import in is lambda nonlocal not or pass raise return try while
with yield match case self cls
"""
)
_PY_BUILTINS = _words(
    """
abs( all( any( ascii( bin( bool( breakpoint( bytearray( bytes( callable( chr( classmethod(
compile( complex( delattr( dict( dir( divmod( enumerate( eval( exec( filter( float( format(
frozenset( getattr( globals( hasattr( hash( help( hex( id( input( int( isinstance(
issubclass( iter( len( list( locals( map( max( memoryview( min( next( object( oct( open(
ord( pow( print( property( range( repr( reversed( round( set( setattr( slice( sorted(
staticmethod( str( sum( super( tuple( type( vars( zip( Exception( ValueError( TypeError(
KeyError( IndexError( RuntimeError( AttributeError( NotImplementedError( StopIteration(
OSError( FileNotFoundError( NotImplemented
"""
)
_PY_MEMBERS: dict[str, tuple[str, ...]] = {
    "os": _words("path getcwd( listdir( environ getenv( makedirs( remove( walk( rename( sep"),
    "os.path": _words(
        "join( exists( dirname( basename( abspath( isfile( isdir( splitext( expanduser("
    ),
    "sys": _words("argv exit( path stdout stderr stdin version platform modules"),
    "json": _words("dumps( loads( dump( load( JSONDecodeError"),
    "math": _words("sqrt( floor( ceil( pi inf isclose( log( exp( sin( cos( gcd("),
    "re": _words("compile( match( search( sub( findall( fullmatch( split( finditer( escape("),
    "typing": _words(
        "Any Optional Union Callable Iterable Iterator Sequence Mapping Protocol TypeVar"
    ),
    "collections": _words("defaultdict( Counter( OrderedDict( deque( namedtuple("),
    "dataclasses": _words("dataclass field( asdict( replace( fields("),
    "itertools": _words("chain( groupby( islice( product( permutations( combinations("),
    "functools": _words("partial( reduce( lru_cache( wraps( cache cached_property"),
    "pathlib": ("Path(", "PurePath("),
    "datetime": _words("datetime date timedelta timezone"),
    "asyncio": _words("run( gather( sleep( create_task( wait_for( Queue( Lock( Event("),
    "logging": _words("getLogger( basicConfig( DEBUG INFO WARNING ERROR"),
    "subprocess": _words("run( check_output( Popen( PIPE CalledProcessError"),
}

_JS_WORDS = _words(
    """
break case catch class const continue debugger default delete do else export extends
finally for function if import in instanceof let new null return super switch this throw
true false try typeof undefined var void while yield async await of static get set
console document window JSON Math Object Array String Number Boolean Promise Map Set Date
Error RegExp Symbol globalThis module exports parseInt( parseFloat( setTimeout(
setInterval( clearTimeout( clearInterval( fetch( require( isNaN( structuredClone(
"""
)
_TS_WORDS = _words(
    """
interface type enum namespace declare abstract implements private protected public
readonly keyof infer as satisfies unknown never any string number boolean bigint symbol
object Record Partial Readonly Required Pick Omit ReturnType Exclude Extract NonNullable
Awaited
"""
)
_JS_MEMBERS: dict[str, tuple[str, ...]] = {
    "console": _words(
        "log( error( warn( info( debug( table( time( timeEnd( group( groupEnd( trace( assert("
    ),
    "document": _words(
        "getElementById( querySelector( querySelectorAll( createElement( addEventListener("
        " body head title documentElement createTextNode( getElementsByClassName("
    ),
    "JSON": ("parse(", "stringify("),
    "Math": _words("floor( max( min( round( random( abs( ceil( sqrt( pow( PI trunc( sign( log( E"),
    "Object": _words("keys( values( entries( assign( freeze( fromEntries( create("),
    "Array": ("isArray(", "from(", "of("),
    "Promise": _words("all( resolve( reject( allSettled( race( any("),
    "Number": _words("isInteger( isNaN( parseFloat( parseInt( isFinite( MAX_SAFE_INTEGER"),
    "window": _words("addEventListener( location localStorage setTimeout( requestAnimationFrame("),
    "localStorage": ("getItem(", "setItem(", "removeItem(", "clear("),
}

_UNICODE_IDENTIFIER = re.compile(r"[^\W\d]\w*")
_JS_IDENTIFIER = re.compile(r"(?:[^\W\d]|\$)[\w$]*")
_ESCAPE = r"\\[\s\S]|"
_JS_RULES: tuple[_Rule, ...] = (
    _keyword_rule,
    _identifier_rule,
    _member_rule,
    _js_snippet_rule,
    _closer_rule,
)

_PYTHON = _Language(
    words=_PY_KEYWORDS + _PY_BUILTINS,
    members=_PY_MEMBERS,
    identifier=_UNICODE_IDENTIFIER,
    reversed_word=re.compile(r"\w*"),
    tokens=re.compile(_ESCAPE + r'"""|' + r"'''|" + r"""["'#\n()\[\]{}]"""),
    line_comment="#",
    import_line=re.compile(r"[ \t]*(?:import|from)[ \t]"),
    rules=(
        _keyword_rule,
        _identifier_rule,
        _member_rule,
        _python_method_rule,
        _python_snippet_rule,
        _closer_rule,
    ),
)
_JS_TOKENS = re.compile(_ESCAPE + r"/\*|\*/|//|" + r"""["'`\n()\[\]{}]""")
_JAVASCRIPT = _Language(
    words=_JS_WORDS,
    members=_JS_MEMBERS,
    identifier=_JS_IDENTIFIER,
    reversed_word=re.compile(r"[\w$]*"),
    tokens=_JS_TOKENS,
    line_comment="//",
    import_line=None,
    rules=_JS_RULES,
)
_TYPESCRIPT = replace(_JAVASCRIPT, words=_JS_WORDS + _TS_WORDS)
# Unknown languages: no vocabulary or lexing we could trust, only the document's words.
_PLAIN = _Language(
    words=(),
    members={},
    identifier=_UNICODE_IDENTIFIER,
    reversed_word=re.compile(r"\w*"),
    tokens=None,
    line_comment="",
    import_line=None,
    rules=(_identifier_rule,),
)
_LANGUAGES: dict[str, _Language] = {
    "python": _PYTHON,
    "py": _PYTHON,
    "javascript": _JAVASCRIPT,
    "js": _JAVASCRIPT,
    "javascriptreact": _JAVASCRIPT,
    "jsx": _JAVASCRIPT,
    "typescript": _TYPESCRIPT,
    "ts": _TYPESCRIPT,
    "typescriptreact": _TYPESCRIPT,
    "tsx": _TYPESCRIPT,
}


# --------------------------------------------------------------------------
# Engine


class RuleBasedEngine:
    """Deterministic, rule-based :class:`CompletionEngine`: the stand-in for a model.

    Every rule proposes candidates; duplicates (same label) keep their best
    confidence, and the result is sorted by confidence (ties by label, then
    text) and capped, so equal input always yields equal output.
    """

    def __init__(self, max_suggestions: int = 5) -> None:
        """Cap how many suggestions one request returns (a menu, not a dump)."""
        if max_suggestions < 1:
            raise ValueError(f"max_suggestions must be at least 1, got {max_suggestions}")
        self._max_suggestions = max_suggestions

    def complete(self, code: str, cursor: int, language: str) -> list[Suggestion]:
        """Suggest completions for ``code`` at code-point index ``cursor``, best first.

        Never raises for odd input: the cursor is clamped, unknown languages
        fall back to identifiers from the document, and only a bounded window
        around the cursor is examined.
        """
        ctx = _build_context(code, cursor, language)
        best: dict[str, Suggestion] = {}
        for rule in ctx.lang.rules:
            for suggestion in rule(ctx):
                current = best.get(suggestion.label)
                if suggestion.text and (
                    current is None
                    or (suggestion.confidence, suggestion.text) > (current.confidence, current.text)
                ):
                    best[suggestion.label] = suggestion
        ranked = sorted(best.values(), key=lambda s: (-s.confidence, s.label, s.text))
        return ranked[: self._max_suggestions]
