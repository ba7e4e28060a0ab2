"""Grammar-constrained decoding of CoordJSON (see docs/EVALUATION.md): a `transformers.LogitsProcessor`.

What it enforces (per batch row, from the tokens that row has generated so far):

    {"objects": [ REC (", " REC)* ]}  <end-of-turn>        (or the empty answer {"objects": []})
    REC (desc_first)     = {"desc": "TEXT", "bbox_2d": [C, C, C, C]}
    REC (geometry_first) = {"bbox_2d": [C, C, C, C], "desc": "TEXT"}

- `C` is exactly one coordinate-token id (one of the 1000 `<|coord_k|>` ids); inside `bbox_2d` nothing
  else is allowed, and coordinate tokens are allowed nowhere else. Boxes are never degenerate: x1 and
  y1 are below 999, x2 > x1 and y2 > y1 (the processor remembers x1, y1 of the box being written).
- `TEXT` is free text without `"`, `\\` or control characters and with at least one non-space
  character (so `desc` is never empty after strip); escapes are not supported.
- Separators are exactly the canonical `", "` and `": "` (no free whitespace).
- The end-of-turn id is allowed only right after the closing `]}`; other special tokens never.
- With `max_new_tokens` known, a token is allowed only if the answer can still be completed within the
  remaining budget (shortest completion, counted in tokens of this vocabulary). So every constrained
  rollout is parseable by `parse.parse_prediction` with zero drops (no `degenerate_box` either), is never `truncated`, and ends
  with end-of-turn (given `max_new_tokens >= ` the shortest complete answer: 3 tokens with the tiny
  tokenizer; below that the processor degrades to "closest to completion").

How: the grammar is a character-level automaton (a handful of literal nodes, two choice points, the
desc text and the coordinate slots). A token is fed through it character by character (special tokens
as atomic symbols), so the processor works for ANY tokenizer whose tokens decode individually to the
text they produce: single-token structure pieces (the tiny tokenizer) and BPE splits (`{"`,
`objects`, `":`, ` [` …) alike, including tokens that cross a boundary (e.g. `"` + `, "`).
Per automaton state the allowed-token mask and the transitions are computed once and cached; the
state graph is enumerated once (lazily) to get the shortest completion from every state.

Limits (honest):
- Cost of the one-off tables is O(#states x |V|) Python character feeds for the desc states and
  O(#states x #tokens starting with the expected character) elsewhere: milliseconds for the tiny
  vocabulary, seconds for a 150k BPE vocabulary. Per step the cost is one mask gather per row.
- Pieces must be the per-token decoded text; a byte-level token that decodes to a partial UTF-8
  character (`\\ufffd`) is treated as a desc character, so desc text may contain U+FFFD.
- Greedy decoding and sampling only (`num_beams=1`): per-row state is tracked incrementally and
  beam reordering is not followed.
- It guarantees syntax, not sense: a model that wants to write digits gets its most likely
  coordinate token instead (the point of the "constrained minus unconstrained" diagnostic).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from typing import Collection, Sequence

import torch
from transformers import LogitsProcessor

from vlmdet.format import check_field_order
from vlmdet.model.load import token_pieces

# Node kinds of the automaton.
_LIT, _CHOICE, _DESC, _COORD, _EOT, _DONE = range(6)

State = tuple  # (node_name, pos) for literal/choice/coord/eot/done; ("desc", nonempty: 0/1)


def _grammar_nodes(field_order: str) -> dict[str, tuple]:
    """node name -> (kind, payload). Literal: (text, next); choice: [option literal names];
    coord: next; desc: (closing literal name) — the closing literal starts with the quote `"`."""
    check_field_order(field_order)
    nodes: dict[str, tuple] = {
        "open": (_LIT, ('{"objects": [', "first")),
        "first": (_CHOICE, ["rec", "close"]),
        "more": (_CHOICE, ["sep", "close"]),
        "sep": (_LIT, (", ", "rec")),
        "close": (_LIT, ("]}", "eot")),
        "eot": (_EOT, "done"),
        "done": (_DONE, None),
    }
    for i in range(4):
        nodes[f"c{i}"] = (_COORD, f"s{i}" if i < 3 else "geom_end")
        if i < 3:
            nodes[f"s{i}"] = (_LIT, (", ", f"c{i + 1}"))
    if field_order == "desc_first":
        nodes["rec"] = (_LIT, ('{"desc": "', "desc"))
        nodes["desc"] = (_DESC, "after_desc")
        nodes["after_desc"] = (_LIT, ('", "bbox_2d": [', "c0"))
        nodes["geom_end"] = (_LIT, ("]}", "more"))
    else:
        nodes["rec"] = (_LIT, ('{"bbox_2d": [', "c0"))
        nodes["geom_end"] = (_LIT, ('], "desc": "', "desc"))
        nodes["desc"] = (_DESC, "after_desc")
        nodes["after_desc"] = (_LIT, ('"}', "more"))
    return nodes


class CoordJSONGrammar:
    """The automaton plus per-state token tables for one vocabulary (build once, share between calls).

    `pieces[i]`: decoded text of token id i (`model.load.token_pieces`); `coord_ids`: the 1000 coord
    ids in bin order; `eot_id`: end-of-turn; `special_ids`: every other id that must never be generated
    (chat specials, unk, image pads, …); `vocab_size`: the logits width (>= len(pieces); ids beyond
    `pieces` are never allowed).
    """

    START: State = ("open", 0)
    DONE: State = ("done", 0)

    def __init__(
        self,
        pieces: Sequence[str],
        coord_ids: Sequence[int],
        eot_id: int,
        special_ids: Collection[int] = (),
        field_order: str = "desc_first",
        vocab_size: int | None = None,
    ):
        self.nodes = _grammar_nodes(field_order)
        self.field_order = field_order
        self.pieces = list(pieces)
        self.vocab_size = int(vocab_size if vocab_size is not None else len(self.pieces))
        self.coord_ids = [int(i) for i in coord_ids]
        self.coord_set = frozenset(self.coord_ids)
        self.bin_of_id = {i: k for k, i in enumerate(self.coord_ids)}
        self.coord_index = torch.tensor(self.coord_ids, dtype=torch.long)
        self.eot_id = int(eot_id)
        self.blocked = frozenset(int(i) for i in special_ids) - self.coord_set - {self.eot_id}
        # text tokens indexed by first character (for literal states), and all text tokens (desc states)
        self._text_ids: list[int] = []
        self._by_first: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(self.pieces):
            if i in self.coord_set or i == self.eot_id or i in self.blocked or not p:
                continue
            self._text_ids.append(i)
            self._by_first[p[0]].append(i)
        self._trans: dict[State, dict[int, State]] = {}
        self._dist: dict[State, int] | None = None
        self._need: dict[State, torch.Tensor] = {}

    # ----------------------------------------------------------------- character-level automaton
    def _normalize(self, node: str, pos: int) -> State:
        while True:
            kind, payload = self.nodes[node]
            if kind == _LIT and pos >= len(payload[0]):
                node, pos = payload[1], 0
                continue
            return (node, pos)

    def feed_char(self, state: State, ch: str) -> State | None:
        """Next state after one text character, or None when the character breaks the grammar."""
        node, pos = state
        kind, payload = self.nodes[node]
        if kind == _LIT:
            return self._normalize(node, pos + 1) if payload[0][pos] == ch else None
        if kind == _CHOICE:
            for option in payload:
                if self.nodes[option][1][0][0] == ch:
                    return self._normalize(option, 1)
            return None
        if kind == _DESC:
            if ch == '"':
                return self._normalize(payload, 1) if pos else None  # empty desc may not close
            if ch == "\\" or ord(ch) < 0x20:
                return None
            return (node, 1 if (pos or not ch.isspace()) else 0)
        return None  # coord / eot / done accept no text

    def feed_token(self, state: State, token_id: int) -> State | None:
        """Next state after one token id, or None when the token is not allowed in `state`."""
        node, _ = state
        kind, payload = self.nodes[node]
        if kind == _DONE:
            return state  # absorbing: whatever padding follows the end is ignored
        if token_id in self.coord_set:
            return self._normalize(payload, 0) if kind == _COORD else None
        if token_id == self.eot_id:
            return self.DONE if kind == _EOT else None
        if token_id in self.blocked or token_id >= len(self.pieces) or not self.pieces[token_id]:
            return None
        for ch in self.pieces[token_id]:
            state = self.feed_char(state, ch)
            if state is None:
                return None
        return state

    def transitions(self, state: State) -> dict[int, State]:
        """Allowed token id -> next state, for `state` (cached)."""
        got = self._trans.get(state)
        if got is not None:
            return got
        node, pos = state
        kind, payload = self.nodes[node]
        if kind == _COORD:
            nxt = self._normalize(payload, 0)
            got = {i: nxt for i in self.coord_ids}
        elif kind == _EOT:
            got = {self.eot_id: self.DONE}
        elif kind == _DONE:
            got = {self.eot_id: self.DONE}
        else:
            if kind == _LIT:
                candidates = self._by_first.get(payload[0][pos], [])
            elif kind == _CHOICE:
                candidates = [i for o in payload for i in self._by_first.get(self.nodes[o][1][0][0], [])]
            else:  # desc: any text token may continue it
                candidates = self._text_ids
            got = {}
            for i in candidates:
                nxt = self.feed_token(state, i)
                if nxt is not None:
                    got[i] = nxt
        self._trans[state] = got
        return got

    # ----------------------------------------------------------------- shortest completion
    def _build_dist(self) -> dict[State, int]:
        """Tokens needed to reach DONE from every state reachable from START (BFS on reversed edges)."""
        seen = {self.START}
        queue = deque([self.START])
        reverse: dict[State, set[State]] = defaultdict(set)
        while queue:
            s = queue.popleft()
            for nxt in set(self.transitions(s).values()):
                reverse[nxt].add(s)
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
        dist = {self.DONE: 0}
        queue = deque([self.DONE])
        while queue:
            s = queue.popleft()
            for prev in reverse[s]:
                if prev not in dist:
                    dist[prev] = dist[s] + 1
                    queue.append(prev)
        return dist

    def dist(self, state: State) -> float:
        """Fewest tokens that complete the answer (including end-of-turn) from `state`; inf if none."""
        if self._dist is None:
            self._dist = self._build_dist()
        return self._dist.get(state, math.inf)

    def need(self, state: State) -> torch.Tensor:
        """float [vocab_size]: 1 + dist(next state) for each allowed token, inf for the rest (cached)."""
        got = self._need.get(state)
        if got is None:
            got = torch.full((self.vocab_size,), math.inf)
            for i, nxt in self.transitions(state).items():
                if i < self.vocab_size:
                    got[i] = 1 + self.dist(nxt)
            self._need[state] = got
        return got

    def run(self, token_ids: Sequence[int], state: State | None = None) -> State | None:
        """Feed a whole token sequence (None as soon as a token breaks the grammar)."""
        state = self.START if state is None else state
        for t in token_ids:
            state = self.transitions(state).get(int(t)) if state is not None else None
            if state is None:
                return None
        return state


_CACHE: dict[tuple, tuple] = {}  # (id(tokenizer), field_order, vocab_size) -> (tokenizer, grammar)


def grammar_for(loaded, field_order: str = "desc_first", pieces: Sequence[str] | None = None) -> CoordJSONGrammar:
    """A grammar for a `model.load.Loaded` (pieces from `model.load.token_pieces` unless given).
    Every added special token other than the coord tokens and end-of-turn is blocked, and so is unk.
    Grammars built from the tokenizer's own pieces are cached per (tokenizer, field order, logits
    width), so repeated evals during training build the tables once."""
    tok = loaded.tokenizer
    vocab_size = loaded.model.get_output_embeddings().weight.shape[0]
    key = (id(tok), field_order, vocab_size, tuple(loaded.coord_ids[:1]), loaded.eot_id)
    hit = _CACHE.get(key)
    if pieces is None and hit is not None and hit[0] is tok:
        return hit[1]
    own_pieces = pieces is None
    if pieces is None:
        pieces = [token_pieces(tok, [i])[0] for i in range(len(tok))]
    special = {int(i) for i, t in tok.added_tokens_decoder.items() if getattr(t, "special", False)}
    special |= {int(i) for i in tok.all_special_ids}
    grammar = CoordJSONGrammar(pieces, loaded.coord_ids, loaded.eot_id, special, field_order, vocab_size)
    if own_pieces:
        _CACHE[key] = (tok, grammar)
    return grammar


class CoordJSONLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the CoordJSON grammar (or the length budget) to -inf.

    One instance per `generate` call (it tracks each row's automaton state); the `grammar` tables are
    shared. `prompt_len`: length of the (left-padded) prompt; default: the input length at the first
    call. `max_new_tokens`: the generation budget; None disables the budget rule (then a rollout that
    runs out of tokens can still be truncated). Place it AFTER processors that reshape scores (e.g. a
    repetition penalty) and BEFORE temperature / top-p warpers.
    """

    def __init__(self, grammar: CoordJSONGrammar, prompt_len: int | None = None, max_new_tokens: int | None = None):
        self.grammar = grammar
        self.prompt_len = prompt_len
        self.max_new_tokens = max_new_tokens
        self.states: list[State] = []
        self.low: list[list[int]] = []  # per row: bins of x1, y1 of the box being written
        self._consumed = 0

    def _box_rule(self, need: torch.Tensor) -> None:
        """No degenerate box: x1, y1 < 999; x2 > x1; y2 > y1 (in place on `need`)."""
        ids = self.grammar.coord_index
        for r, (node, _) in enumerate(self.states):
            if node in ("c0", "c1"):
                need[r, ids[-1]] = math.inf
            elif node in ("c2", "c3"):
                lo = self.low[r][int(node[1]) - 2]
                need[r, ids[: lo + 1]] = math.inf

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        g = self.grammar
        if self.prompt_len is None:
            self.prompt_len = input_ids.shape[1]
        if not self.states:
            self.states = [g.START] * input_ids.shape[0]
            self.low = [[-1, -1] for _ in self.states]
        n_gen = input_ids.shape[1] - self.prompt_len
        for t in range(self._consumed, n_gen):
            col = input_ids[:, self.prompt_len + t].tolist()
            for r, tok in enumerate(col):
                node = self.states[r][0]
                if node in ("c0", "c1"):
                    self.low[r][int(node[1])] = g.bin_of_id[tok] if tok in g.bin_of_id else -1
                nxt = g.transitions(self.states[r]).get(tok)
                # a token the grammar did not allow (only possible if a later processor overrode us):
                # end the row as soon as possible rather than raising
                self.states[r] = nxt if nxt is not None else g.DONE
        self._consumed = n_gen
        need = torch.stack([g.need(s) for s in self.states])
        if need.shape[1] < scores.shape[1]:
            need = torch.nn.functional.pad(need, (0, scores.shape[1] - need.shape[1]), value=math.inf)
        need = need[:, : scores.shape[1]]
        self._box_rule(need)
        need = need.to(scores.device)
        if self.max_new_tokens is None:
            allowed = torch.isfinite(need)
        else:
            budget = self.max_new_tokens - n_gen
            allowed = need <= budget
            # out of budget for a full answer: best effort, the tokens closest to completion
            stuck = ~allowed.any(dim=1)
            if stuck.any():
                best = need[stuck].min(dim=1, keepdim=True).values
                allowed[stuck] = (need[stuck] == best) & torch.isfinite(best)
        return scores.masked_fill(~allowed, float("-inf"))
