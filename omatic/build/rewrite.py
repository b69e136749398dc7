"""Find the receive entry points of one C file and rewrite them into PFQ hooks.

A regular expression finds where a rule's callee is named; the file is parsed with
tree-sitter and only the nodes at those places are looked at (walking or querying the whole
tree of every file would cost more than parsing it). Each identifier found is classified by
its place in the syntax tree: a call (rewritten when its argument count matches the rule),
a value such as `fn = netif_receive_skb;` (rewritten: the hook has the same type), or not a
site at all (a declaration, a macro's own name, a member `ops->netif_rx`). Tree-sitter
keeps `#define` bodies as text, so each body that mentions a callee is parsed on its own
and its sites are mapped back to the file.

A rewrite is a list of edits `(start, end, new_bytes)` on the file's bytes; they are checked
for overlaps, applied from the end backwards, and the result is reparsed: a file that parses
with more errors than the original is left as it was and reported.
"""

from __future__ import annotations

import itertools
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import tree_sitter
import tree_sitter_c

from omatic.build.difftext import diff_edits
from omatic.rules import Rule

#: The line a rewritten file gets once; kmod/include/pfq/hooks.h declares the hooks.
HOOK_INCLUDE = b"#include <pfq/hooks.h>"

#: Parents under which an identifier names something rather than uses it.
_NAMING_PARENTS = frozenset({
    "preproc_def", "preproc_function_def", "preproc_ifdef", "preproc_defined",
    "preproc_params", "parameter_declaration", "field_declaration", "parenthesized_declarator",
})

_IDENT_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")

#: What a macro body is wrapped in when parsed as statements.
_WRAP_PREFIX = b"void __omatic_macro_body(void)\n{\n"
_WRAP_SUFFIX = b"\n;}\n"


@dataclass(frozen=True)
class Site:
    """One use of a receive entry point, and what the rewriter does with it."""

    #: Path relative to the scanned root, with '/' separators.
    file: str
    #: 1-based line and byte column of the identifier.
    line: int
    column: int
    #: The entry point ("napi_gro_receive") and the hook its rule names.
    callee: str
    hook: str
    #: Enclosing function, or the macro whose body holds the site; None at file scope.
    function: str | None
    #: "code" (a call in code), "macro-body" (inside a #define), "value" (not called).
    context: str
    #: "rewrite" or "report".
    action: str
    #: Why that action, for the reviewer.
    reason: str
    #: Byte range of the identifier in the file.
    start: int
    end: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Edit:
    """Replace bytes [start, end) of a file with `new`."""

    start: int
    end: int
    new: bytes
    #: The bytes replaced, for the report.
    old: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end,
                "old": self.old.decode("utf-8", "replace"),
                "new": self.new.decode("utf-8", "replace")}


@dataclass
class FileResult:
    """What scanning (and maybe rewriting) one file gave."""

    file: str
    sites: list[Site] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    #: "unchanged", "rewritten", "refused" (result parsed worse) or "error" (unreadable...).
    status: str = "unchanged"
    reason: str = ""
    #: The rewritten bytes when status is "rewritten".
    new_data: bytes | None = None
    #: The unified diff of the rewrite ("a/FILE", "b/FILE"), when status is "rewritten".
    diff: bytes = b""

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "status": self.status, "reason": self.reason,
                "sites": len(self.sites), "edits": [e.to_json() for e in self.edits]}


class OverlapError(ValueError):
    """Two edits of one file touch the same bytes."""


def apply_edits(data: bytes, edits: Sequence[Edit]) -> bytes:
    """Apply non-overlapping edits, from the end backwards so offsets stay valid."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    for a, b in itertools.pairwise(ordered):
        if b.start < a.end or (a.start == a.end == b.start == b.end):
            raise OverlapError(f"edits at bytes {a.start}-{a.end} and {b.start}-{b.end} overlap")
    out = bytearray(data)
    for e in reversed(ordered):
        out[e.start:e.end] = e.new
    return bytes(out)


def count_errors(node: tree_sitter.Node) -> int:
    """ERROR and MISSING nodes under `node`, descending only where errors are."""
    if not node.has_error:
        return 0
    own = 1 if (node.type == "ERROR" or node.is_missing) else 0
    return own + sum(count_errors(child) for child in node.children)


def _position(data: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, byte column) of `offset`."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _skip_blanks(data: bytes, i: int) -> int:
    """Index of the first byte at or after i that is not white space or a line splice."""
    n = len(data)
    while i < n:
        c = data[i]
        if c in b" \t\r\n\f\v":
            i += 1
        elif c == 0x5C and data[i + 1:i + 2] in (b"\n", b"\r"):  # backslash-newline
            i += 2
        else:
            break
    return i


def _lexical_arity(data: bytes, open_paren: int, limit: int = 8192) -> int | None:
    """Arguments of the call whose '(' is at `open_paren`, by tokens; None if unbalanced."""
    depth, commas, i, seen = 0, 0, open_paren, False
    end = min(len(data), open_paren + limit)
    while i < end:
        c = data[i:i + 1]
        if c in (b'"', b"'"):
            j = i + 1
            while j < end and data[j:j + 1] != c:
                j += 2 if data[j:j + 1] == b"\\" else 1
            i, seen = j + 1, True
            continue
        if c in b"([{":
            depth += 1
        elif c in b")]}":
            depth -= 1
            if depth == 0:
                return commas + 1 if seen else 0
        elif c == b"," and depth == 1:
            commas += 1
        elif depth >= 1 and not c.isspace() and c != b"\\":
            seen = True
        i += 1
    return None


def _declarator_name(node: tree_sitter.Node | None) -> str | None:
    """The identifier a (function) declarator declares."""
    while node is not None and node.type != "identifier":
        node = node.child_by_field_name("declarator")
    return node.text.decode("utf-8", "replace") if node is not None and node.text else None


def _enclosing_function(node: tree_sitter.Node) -> str | None:
    parent = node.parent
    while parent is not None:
        if parent.type == "function_definition":
            return _declarator_name(parent.child_by_field_name("declarator"))
        parent = parent.parent
    return None


class Rewriter:
    """Scans and rewrites C files under one set of rules. Not thread-safe: one per process."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = {r.callee: r for r in rules}
        names = sorted(self.rules, key=len, reverse=True)
        #: A callee's name, matched where an anchor starts a word.
        self.word = re.compile(rb"(?:" + b"|".join(n.encode() for n in names) + rb")\b")
        self.language = tree_sitter.Language(tree_sitter_c.language())
        self.parser = tree_sitter.Parser(self.language)
        #: Cheap substring tests before the regex: most files mention no callee at all.
        self.anchors = sorted({n.split("_")[0].encode() + b"_" for n in names})

    # -- finding sites -------------------------------------------------------------------

    def _candidates(self, data: bytes) -> list[tuple[int, int]]:
        """Byte ranges where a callee's name appears as a whole word (in code or not).

        bytes.find on each anchor ("netif_", "napi_") and a regex match at each hit is
        several times faster than one regex search over the file.
        """
        spans = []
        for anchor in self.anchors:
            i = data.find(anchor)
            while i >= 0:
                if i == 0 or data[i - 1] not in _IDENT_BYTES:
                    m = self.word.match(data, i)
                    if m:
                        spans.append(m.span())
                i = data.find(anchor, i + 1)
        spans.sort()
        return spans

    def scan(self, data: bytes, file: str) -> list[Site]:
        """Every site in one file's bytes (empty when no callee is even mentioned)."""
        spans = self._candidates(data)
        if not spans:
            return []
        return self._scan_tree(data, self._parse(data, spans)[0], file, spans)

    def _parse(self, data: bytes, spans: list[tuple[int, int]]
               ) -> tuple[tree_sitter.Tree, list[tuple[int, int]] | None]:
        """Parse what the spans need: the top-level items around them, or the whole file.

        Parsing is most of the cost, and a site's classification depends only on the
        top-level item holding it (tree-sitter's C grammar is context-free). The items are
        found by kernel layout (an item ends with a line starting with '}'); when that guess
        is wrong the partial parse has errors and the whole file is parsed instead.
        Returns the tree and the regions parsed (None: the whole file).
        """
        regions = top_level_regions(data, spans)
        if regions is not None:
            tree = self._parse_regions(data, regions)
            if not tree.root_node.has_error:
                return tree, regions
        self.parser.included_ranges = []
        return self.parser.parse(data), None

    def _parse_regions(self, data: bytes, regions: list[tuple[int, int]]) -> tree_sitter.Tree:
        self.parser.included_ranges = [
            tree_sitter.Range(_point(data, a), _point(data, b), a, b) for a, b in regions]
        try:
            return self.parser.parse(data)
        finally:
            self.parser.included_ranges = []

    def _scan_tree(self, data: bytes, tree: tree_sitter.Tree, file: str,
                   spans: list[tuple[int, int]]) -> list[Site]:
        """Sites at the candidate spans: only the nodes there are looked at, not the tree."""
        sites: list[Site] = []
        bodies: dict[int, tree_sitter.Node] = {}
        for start, end in spans:
            node = tree.root_node.descendant_for_byte_range(start, end)
            if node is None:
                continue
            if node.type == "identifier" and node.start_byte == start and node.end_byte == end:
                site = self._site(data, file, node, data, 0, _enclosing_function(node), False)
                if site is not None:
                    sites.append(site)
            elif (node.type == "preproc_arg" and node.parent is not None
                  and node.parent.type in ("preproc_def", "preproc_function_def")):
                bodies[node.start_byte] = node
            # Anything else is a comment, a string, a member name or a directive's text.
        for body in bodies.values():
            name = body.parent.child_by_field_name("name") if body.parent else None
            macro = name.text.decode("utf-8", "replace") if name and name.text else None
            sites.extend(self._macro_sites(data, file, body, macro))
        sites.sort(key=lambda s: s.start)
        return sites

    def _macro_sites(self, data: bytes, file: str, body: tree_sitter.Node,
                     macro: str | None) -> list[Site]:
        text = data[body.start_byte:body.end_byte]
        # In a body '#' stringifies and '##' pastes; C has neither, and tree-sitter would
        # take '#x' for a directive. Same-length stand-ins keep every offset: 'a##b' parses
        # as one identifier, '#x' as 'x'.
        source = text.replace(b"##", b"__").replace(b"#", b" ")
        # A body may be statements, an expression, or whole declarations: keep the parse
        # with fewer errors.
        wrapped = _WRAP_PREFIX + source + _WRAP_SUFFIX
        candidates = [(self.parser.parse(wrapped), wrapped, len(_WRAP_PREFIX)),
                      (self.parser.parse(source), source, 0)]
        tree, source, shift = min(candidates, key=lambda c: count_errors(c[0].root_node))
        sites = []
        for start, end in self._candidates(text):
            node = tree.root_node.descendant_for_byte_range(start + shift, end + shift)
            if node is None or node.type != "identifier":
                continue
            site = self._site(data, file, node, source, body.start_byte - shift, macro, True)
            if site is not None:
                sites.append(site)
        return sites

    def _site(self, data: bytes, file: str, node: tree_sitter.Node, source: bytes, base: int,
              function: str | None, in_macro: bool) -> Site | None:
        """Classify one captured identifier; None when it is not a site."""
        callee = source[node.start_byte:node.end_byte].decode()
        rule = self.rules[callee]
        kind, arity, how = self._classify(node, source)
        if kind is None:
            return None
        if kind == "call":
            if rule.action == "report":
                action, reason = "report", rule.reason
            elif arity != rule.arity:
                action = "report"
                reason = (f"called with {'an unknown number of' if arity is None else arity} "
                          f"argument(s); {callee} takes {rule.arity}")
            else:
                action, reason = "rewrite", f"call{how}"
        else:
            if rule.action == "report":
                action, reason = "report", rule.reason
            else:
                action = "rewrite"
                reason = f"used as a value{how}; {rule.hook} has the same type"
        start = base + node.start_byte
        line, column = _position(data, start)
        context = "macro-body" if in_macro else ("code" if kind == "call" else "value")
        return Site(file=file, line=line, column=column, callee=callee, hook=rule.hook,
                    function=function, context=context, action=action, reason=reason,
                    start=start, end=start + len(callee))

    @staticmethod
    def _classify(node: tree_sitter.Node, source: bytes) -> tuple[str | None, int | None, str]:
        """("call", arity, how) / ("value", None, how) / (None, None, "") for non-sites."""
        parent = node.parent
        if parent is None:
            return "value", None, ""
        if parent.type == "call_expression" and parent.child_by_field_name("function") == node:
            args = parent.child_by_field_name("arguments")
            arity = 0 if args is None else sum(1 for c in args.named_children
                                                if c.type != "comment")
            return "call", arity, ""
        if (parent.type in _NAMING_PARENTS
                or parent.child_by_field_name("declarator") == node):
            return None, None, ""
        if parent.type != "ERROR":
            return "value", None, ""
        # Inside a region tree-sitter could not parse: decide by the tokens around it.
        before = source[max(0, node.start_byte - 8):node.start_byte].rstrip(b" \t\r\n\\")
        if before.endswith((b".", b"->")):
            return None, None, ""
        how = " (in a region tree-sitter could not parse; found by tokens)"
        after = _skip_blanks(source, node.end_byte)
        if source[after:after + 1] == b"(":
            return "call", _lexical_arity(source, after), how
        return "value", None, how

    # -- rewriting ----------------------------------------------------------------------

    def rewrite(self, data: bytes, file: str) -> FileResult:
        """Scan one file and, when it has sites to rewrite, produce its rewritten bytes."""
        result = FileResult(file=file)
        spans = self._candidates(data)
        if not spans:
            return result
        tree, regions = self._parse(data, spans)
        result.sites = self._scan_tree(data, tree, file, spans)
        edits = [Edit(s.start, s.end, s.hook.encode(), s.callee.encode())
                 for s in result.sites if s.action == "rewrite"]
        if not edits:
            return result
        if HOOK_INCLUDE not in data:
            first_code = min((s.start for s in result.sites
                              if s.action == "rewrite" and s.context != "macro-body"),
                             default=len(data))
            at = include_point(tree, data, first_code)
            eol = b"\r\n" if b"\r\n" in data[:data.find(b"\n") + 1] else b"\n"
            prefix = eol if at > 0 and data[at - 1:at] != b"\n" else b""
            edits.append(Edit(at, at, prefix + HOOK_INCLUDE + eol))
        try:
            new = apply_edits(data, edits)
        except OverlapError as err:
            result.status, result.reason = "refused", str(err)
            return result
        before = count_errors(tree.root_node)
        if regions is None:
            after = count_errors(self._reparse(tree, data, edits, new).root_node)
        else:
            moved = [(_shift(a, edits), _shift(b, edits)) for a, b in regions]
            after = count_errors(self._parse_regions(new, moved).root_node)
        if after > before:
            result.status = "refused"
            result.reason = f"rewritten file parses with {after} errors, original with {before}"
            return result
        result.edits, result.status, result.new_data = edits, "rewritten", new
        result.diff = diff_edits(file, data, edits)
        return result


    def _reparse(self, tree: tree_sitter.Tree, data: bytes, edits: Sequence[Edit],
                 new: bytes) -> tree_sitter.Tree:
        """Parse `new` incrementally from the tree of `data`: only edited regions are redone."""
        for e in sorted(edits, key=lambda e: e.start, reverse=True):
            start = _point(data, e.start)
            rows = e.new.count(b"\n")
            tail = len(e.new) - (e.new.rfind(b"\n") + 1)
            end = (start[0] + rows, (0 if rows else start[1]) + tail)
            tree.edit(start_byte=e.start, old_end_byte=e.end, new_end_byte=e.start + len(e.new),
                      start_point=start, old_end_point=_point(data, e.end), new_end_point=end)
        return self.parser.parse(new, tree)


#: A line closing a top-level item: '}' in column 0, not inside a macro body.
_TOP_CLOSE = re.compile(rb"^\}[^\n]*(?<!\\)\n", re.MULTILINE)
_INCLUDE_LINE = re.compile(rb"^[ \t]*#[ \t]*include\b[^\n]*\n", re.MULTILINE)


def top_level_regions(data: bytes, spans: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Byte ranges holding the top-level items around `spans`, plus the file's #include
    preamble (the hook header goes after it); None when that is most of the file anyway."""
    bounds = [0, *(m.end() for m in _TOP_CLOSE.finditer(data)), len(data)]
    # Without an #include, include_point() looks at the leading comments: the first item.
    preamble = bounds[1]
    for m in _INCLUDE_LINE.finditer(data, 0, spans[0][0]):
        preamble = m.end()
    regions = [(0, preamble)]
    for start, _end in spans:
        i = bisect_right(bounds, start) - 1
        a, b = bounds[i], bounds[min(i + 1, len(bounds) - 1)]
        if regions and a <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(b, regions[-1][1]))
        else:
            regions.append((a, b))
    if sum(b - a for a, b in regions) > len(data) // 2:
        return None
    return regions


def _shift(offset: int, edits: Sequence[Edit]) -> int:
    """Where `offset` of the original lands once `edits` are applied."""
    return offset + sum(len(e.new) - (e.end - e.start) for e in edits if e.end <= offset)


def _point(data: bytes, offset: int) -> tuple[int, int]:
    """0-based (row, byte column) of `offset`, as tree-sitter counts."""
    line, column = _position(data, offset)
    return line - 1, column - 1


def _is_include_guard(node: tree_sitter.Node) -> bool:
    """`#ifndef X` / `#define X` ... `#endif` around a header."""
    if node.type != "preproc_ifdef" or node.children[0].type != "#ifndef":
        return False
    name = node.child_by_field_name("name")
    first = next((c for c in node.named_children if c.type not in ("identifier", "comment")), None)
    return (first is not None and first.type == "preproc_def" and name is not None
            and first.child_by_field_name("name") is not None
            and first.child_by_field_name("name").text == name.text)  # type: ignore[union-attr]


def include_point(tree: tree_sitter.Tree, data: bytes, before: int) -> int:
    """Where the hook header's #include goes: after the last top-level #include.

    Top level means at file scope or directly inside a header's include guard. Placing it
    after the includes (not at the top) keeps a `#define pr_fmt` written before them
    working. Only includes that end before `before` (the first rewritten call in code)
    count, so the hooks are declared before their first use. With no include, the line
    goes after the include guard's #define, or after the leading comments.
    """
    items: list[tree_sitter.Node] = []
    guard_define: tree_sitter.Node | None = None
    for node in tree.root_node.children:
        if _is_include_guard(node):
            inner = [c for c in node.named_children if c.type != "identifier"]
            guard_define = inner[0]
            items.extend(inner)
        else:
            items.append(node)
    includes = [n for n in items if n.type == "preproc_include" and n.end_byte <= before]
    if includes:
        return _line_end(data, includes[-1].end_byte)
    if guard_define is not None and guard_define.end_byte <= before:
        return _line_end(data, guard_define.end_byte)
    at = 0
    for node in tree.root_node.children:
        if node.type != "comment" or node.end_byte > before:
            break
        at = _line_end(data, node.end_byte)
    return at


def _line_end(data: bytes, offset: int) -> int:
    """Offset just past the end of the line holding `offset - 1` (or `offset` itself)."""
    if offset > 0 and data[offset - 1:offset] == b"\n":
        return offset
    nl = data.find(b"\n", offset)
    return len(data) if nl < 0 else nl + 1
